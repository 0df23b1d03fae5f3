//! `Response`: the server encodes a [`Reply`] or an error with [`ResponseEncoder`]; clients
//! verify and read one with [`ResponseView::decode`].

use std::fmt::Write as _;

use bytes::BytesMut;
use flatbuffers::FlatBufferBuilder;

use super::{fb, has_identifier, hot_reply, verifier_options, Status, RESPONSE_IDENTIFIER};
use crate::error::RequestError;

/// One shard's counters, as `Stats` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub connections: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub requests_hello: u64,
    pub requests_ping: u64,
    pub requests_get: u64,
    pub requests_set: u64,
    pub requests_delete: u64,
    pub requests_compute: u64,
    pub requests_stats: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub items: u64,
    pub bytes_used: u64,
    pub forwarded: u64,
    /// Buffers of this core's pools lent out now; back to its idle level when no work is in
    /// progress (a higher level at rest means buffers that never came back).
    pub buffers_lent: u64,
    /// Buffers idle in this core's pools, kept for reuse.
    pub buffers_free: u64,
    pub requests_touch: u64,
    pub requests_arith: u64,
    pub requests_flush: u64,
    /// Items ever stored (memcached's `total_items`).
    pub items_stored: u64,
    pub delete_hits: u64,
    pub delete_misses: u64,
    pub incr_hits: u64,
    pub incr_misses: u64,
    pub decr_hits: u64,
    pub decr_misses: u64,
    pub cas_hits: u64,
    pub cas_misses: u64,
    pub cas_badval: u64,
    pub touch_hits: u64,
    pub touch_misses: u64,
}

impl ShardStats {
    fn from_fb(s: &fb::ShardStats<'_>) -> Self {
        ShardStats {
            shard: s.shard(),
            connections: s.connections(),
            connections_accepted: s.connections_accepted(),
            connections_refused: s.connections_refused(),
            requests_hello: s.requests_hello(),
            requests_ping: s.requests_ping(),
            requests_get: s.requests_get(),
            requests_set: s.requests_set(),
            requests_delete: s.requests_delete(),
            requests_compute: s.requests_compute(),
            requests_stats: s.requests_stats(),
            hits: s.hits(),
            misses: s.misses(),
            evictions: s.evictions(),
            expirations: s.expirations(),
            items: s.items(),
            bytes_used: s.bytes_used(),
            forwarded: s.forwarded(),
            buffers_lent: s.buffers_lent(),
            buffers_free: s.buffers_free(),
            requests_touch: s.requests_touch(),
            requests_arith: s.requests_arith(),
            requests_flush: s.requests_flush(),
            items_stored: s.items_stored(),
            delete_hits: s.delete_hits(),
            delete_misses: s.delete_misses(),
            incr_hits: s.incr_hits(),
            incr_misses: s.incr_misses(),
            decr_hits: s.decr_hits(),
            decr_misses: s.decr_misses(),
            cas_hits: s.cas_hits(),
            cas_misses: s.cas_misses(),
            cas_badval: s.cas_badval(),
            touch_hits: s.touch_hits(),
            touch_misses: s.touch_misses(),
        }
    }

    fn to_args(self) -> fb::ShardStatsArgs {
        fb::ShardStatsArgs {
            shard: self.shard,
            connections: self.connections,
            connections_accepted: self.connections_accepted,
            connections_refused: self.connections_refused,
            requests_hello: self.requests_hello,
            requests_ping: self.requests_ping,
            requests_get: self.requests_get,
            requests_set: self.requests_set,
            requests_delete: self.requests_delete,
            requests_compute: self.requests_compute,
            requests_stats: self.requests_stats,
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            expirations: self.expirations,
            items: self.items,
            bytes_used: self.bytes_used,
            forwarded: self.forwarded,
            buffers_lent: self.buffers_lent,
            buffers_free: self.buffers_free,
            requests_touch: self.requests_touch,
            requests_arith: self.requests_arith,
            requests_flush: self.requests_flush,
            items_stored: self.items_stored,
            delete_hits: self.delete_hits,
            delete_misses: self.delete_misses,
            incr_hits: self.incr_hits,
            incr_misses: self.incr_misses,
            decr_hits: self.decr_hits,
            decr_misses: self.decr_misses,
            cas_hits: self.cas_hits,
            cas_misses: self.cas_misses,
            cas_badval: self.cas_badval,
            touch_hits: self.touch_hits,
            touch_misses: self.touch_misses,
        }
    }
}

/// The body of a successful reply, borrowing what it sends.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// `Set` and `Delete`: no body.
    Empty,
    Hello {
        shard_count: u32,
        shard: u32,
        shard_ports: &'a [u16],
    },
    Ping {
        payload: &'a [u8],
    },
    Value {
        value: &'a [u8],
        ttl_ms: u32,
    },
    Digest {
        digest: &'a [u8],
    },
    Stats {
        per_shard: &'a [ShardStats],
    },
}

/// Encodes responses into size-prefixed frames with one reused builder: once warm, encoding
/// allocates nothing (error strings are formatted into a reused scratch string).
pub struct ResponseEncoder {
    fbb: FlatBufferBuilder<'static>,
    scratch: String,
    /// The error whose reason `scratch` holds.
    scratch_of: Option<RequestError>,
    /// Replies encoded so far, by status (indexed by the status's value): the encoder is the
    /// one place every native reply passes, so counting here misses none.
    replies: [u64; Status::ENUM_MAX as usize + 1],
}

impl Default for ResponseEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseEncoder {
    pub fn new() -> Self {
        ResponseEncoder {
            fbb: FlatBufferBuilder::with_capacity(4096),
            scratch: String::with_capacity(128),
            scratch_of: None,
            replies: [0; Status::ENUM_MAX as usize + 1],
        }
    }

    /// Appends the frame answering request `id` to `out`.
    pub fn encode(&mut self, id: u64, result: Result<Reply<'_>, RequestError>, out: &mut BytesMut) {
        match result {
            Ok(reply) => self.ok(id, &reply, out),
            Err(error) => self.error(id, &error, out),
        }
    }

    /// Replies encoded so far with each status.
    pub fn replies_by_status(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        Status::ENUM_VALUES
            .iter()
            .map(|&status| (status, self.replies[status.0 as usize]))
    }

    fn count(&mut self, status: Status) {
        if let Some(n) = self.replies.get_mut(status.0 as usize) {
            *n += 1;
        }
    }

    /// Appends a successful reply to request `id`.
    pub fn ok(&mut self, id: u64, reply: &Reply<'_>, out: &mut BytesMut) {
        self.count(Status::Ok);
        // The hot replies have a fixed layout and skip the builder (see `hot_reply`).
        let written = match *reply {
            Reply::Empty => {
                hot_reply::empty(id, out);
                true
            }
            Reply::Ping { payload } => hot_reply::ping(id, payload, out),
            Reply::Value { value, ttl_ms } => hot_reply::value(id, value, ttl_ms, out),
            _ => false,
        };
        if written {
            return;
        }
        let fbb = &mut self.fbb;
        fbb.reset();
        let (body_type, body) = match *reply {
            Reply::Empty => (fb::Reply::NONE, None),
            Reply::Hello {
                shard_count,
                shard,
                shard_ports,
            } => {
                let ports = fbb.create_vector(shard_ports);
                let args = fb::HelloReplyArgs {
                    protocol_version: super::PROTOCOL_VERSION,
                    shard_count,
                    shard,
                    shard_ports: Some(ports),
                };
                let t = fb::HelloReply::create(fbb, &args);
                (fb::Reply::HelloReply, Some(t.as_union_value()))
            }
            Reply::Ping { payload } => {
                let payload = fbb.create_vector(payload);
                let t = fb::PingReply::create(
                    fbb,
                    &fb::PingReplyArgs {
                        payload: Some(payload),
                    },
                );
                (fb::Reply::PingReply, Some(t.as_union_value()))
            }
            Reply::Value { value, ttl_ms } => {
                let value = fbb.create_vector(value);
                let args = fb::ValueArgs {
                    value: Some(value),
                    ttl_ms,
                };
                (
                    fb::Reply::Value,
                    Some(fb::Value::create(fbb, &args).as_union_value()),
                )
            }
            Reply::Digest { digest } => {
                let digest = fbb.create_vector(digest);
                let t = fb::Digest::create(
                    fbb,
                    &fb::DigestArgs {
                        digest: Some(digest),
                    },
                );
                (fb::Reply::Digest, Some(t.as_union_value()))
            }
            Reply::Stats { per_shard } => {
                let mut tables = Vec::with_capacity(per_shard.len());
                for s in per_shard {
                    tables.push(fb::ShardStats::create(fbb, &s.to_args()));
                }
                let per_shard = fbb.create_vector(&tables);
                let args = fb::StatsReplyArgs {
                    per_shard: Some(per_shard),
                };
                let t = fb::StatsReply::create(fbb, &args);
                (fb::Reply::StatsReply, Some(t.as_union_value()))
            }
        };
        let root = fb::Response::create(
            fbb,
            &fb::ResponseArgs {
                id,
                status: Status::Ok,
                body_type,
                body,
                error: None,
            },
        );
        fbb.finish_size_prefixed(root, Some(RESPONSE_IDENTIFIER));
        out.extend_from_slice(fbb.finished_data());
    }

    /// Appends an error reply to request `id` (0 when the request's id is unknown).
    pub fn error(&mut self, id: u64, error: &RequestError, out: &mut BytesMut) {
        self.count(error.status());
        // A run of one error (a get miss after another) formats its reason once: the text is a
        // function of the error's value alone.
        if self.scratch_of != Some(*error) {
            self.scratch.clear();
            // Writing into a String cannot fail.
            let _ = write!(self.scratch, "{error}");
            self.scratch_of = Some(*error);
        }
        // Every error reply has the same fixed layout (see `hot_reply`); the builder is kept for
        // a reason too long for it, which no `RequestError` has.
        if hot_reply::error(id, error.status().0, &self.scratch, out) {
            return;
        }
        let fbb = &mut self.fbb;
        fbb.reset();
        let message = fbb.create_string(&self.scratch);
        let root = fb::Response::create(
            fbb,
            &fb::ResponseArgs {
                id,
                status: error.status(),
                body_type: fb::Reply::NONE,
                body: None,
                error: Some(message),
            },
        );
        fbb.finish_size_prefixed(root, Some(RESPONSE_IDENTIFIER));
        out.extend_from_slice(fbb.finished_data());
    }
}

/// A verified response, borrowing the frame it was read from.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    pub id: u64,
    pub status: Status,
    /// The server's reason when `status` is not `Ok`.
    pub error: Option<&'a str>,
    pub body: ReplyView<'a>,
}

/// The body of a response as read by a client.
#[derive(Debug, Clone, Copy)]
pub enum ReplyView<'a> {
    None,
    Hello(fb::HelloReply<'a>),
    Ping {
        payload: &'a [u8],
    },
    Value {
        value: &'a [u8],
        ttl_ms: u32,
    },
    Digest {
        digest: &'a [u8],
    },
    Stats(fb::StatsReply<'a>),
    /// A reply member this build does not know.
    Unknown(u8),
}

/// Why a response frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response frame: {0}")]
pub struct InvalidResponse(pub String);

impl<'a> ResponseView<'a> {
    /// Verifies `frame` (one whole frame, length prefix included) as a `Response`.
    pub fn decode(frame: &'a [u8]) -> Result<ResponseView<'a>, InvalidResponse> {
        if !has_identifier(frame, RESPONSE_IDENTIFIER) {
            return Err(InvalidResponse("file identifier is not PCRS".into()));
        }
        // A Stats reply's tables share one vtable, which the verifier counts once per table, and
        // it holds one table per shard.
        let options = flatbuffers::VerifierOptions {
            max_tables: 4096,
            ..verifier_options(frame.len().saturating_mul(4))
        };
        let r = flatbuffers::size_prefixed_root_with_opts::<fb::Response>(&options, frame)
            .map_err(|e| InvalidResponse(e.to_string()))?;
        let body = match r.body_type() {
            fb::Reply::NONE => Some(ReplyView::None),
            fb::Reply::HelloReply => r.body_as_hello_reply().map(ReplyView::Hello),
            fb::Reply::PingReply => r.body_as_ping_reply().map(|p| ReplyView::Ping {
                payload: p.payload().map(|v| v.bytes()).unwrap_or(&[]),
            }),
            fb::Reply::Value => r.body_as_value().map(|v| ReplyView::Value {
                value: v.value().map(|v| v.bytes()).unwrap_or(&[]),
                ttl_ms: v.ttl_ms(),
            }),
            fb::Reply::Digest => r.body_as_digest().map(|d| ReplyView::Digest {
                digest: d.digest().map(|v| v.bytes()).unwrap_or(&[]),
            }),
            fb::Reply::StatsReply => r.body_as_stats_reply().map(ReplyView::Stats),
            other => Some(ReplyView::Unknown(other.0)),
        }
        .ok_or_else(|| InvalidResponse("reply type set without a body".into()))?;
        Ok(ResponseView {
            id: r.id(),
            status: r.status(),
            error: r.error(),
            body,
        })
    }

    /// The per-shard counters of a `Stats` reply (empty for any other reply).
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        match &self.body {
            ReplyView::Stats(s) => s
                .per_shard()
                .map(|v| v.iter().map(|s| ShardStats::from_fb(&s)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::PREFIX_LEN;

    fn decode_one(out: &BytesMut) -> ResponseView<'_> {
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        assert_eq!(out.len(), PREFIX_LEN + len);
        ResponseView::decode(out).expect("valid response")
    }

    #[test]
    fn value_reply_round_trips() {
        let mut out = BytesMut::new();
        let mut enc = ResponseEncoder::new();
        enc.ok(
            7,
            &Reply::Value {
                value: b"xyz",
                ttl_ms: 9,
            },
            &mut out,
        );
        let r = decode_one(&out);
        assert_eq!((r.id, r.status, r.error), (7, Status::Ok, None));
        assert!(matches!(
            r.body,
            ReplyView::Value {
                value: b"xyz",
                ttl_ms: 9
            }
        ));
    }

    #[test]
    fn error_reply_carries_status_and_reason() {
        let mut out = BytesMut::new();
        ResponseEncoder::new().error(3, &RequestError::KeyTooLarge(300), &mut out);
        let r = decode_one(&out);
        assert_eq!(r.status, Status::TooLarge);
        assert_eq!(r.error, Some("key is 300 bytes, the limit is 250"));
    }

    #[test]
    fn stats_reply_round_trips() {
        let stats = [
            ShardStats {
                shard: 0,
                hits: 5,
                ..Default::default()
            },
            ShardStats {
                shard: 1,
                forwarded: 2,
                ..Default::default()
            },
        ];
        let mut out = BytesMut::new();
        ResponseEncoder::new().ok(1, &Reply::Stats { per_shard: &stats }, &mut out);
        assert_eq!(decode_one(&out).shard_stats(), stats);
    }
}
