//! Prints an annotated hex dump of one real `Ping` request (id 1, payload `"ping"`) and of the
//! server's reply, both produced by the project's own encoders (`RequestEncoder`,
//! `ResponseEncoder` with `Reply::Ping`). `docs/protocol.md` pastes this output, and
//! `tests/protocol_doc.rs` checks that the bytes in the document are still what the encoders
//! write. Run it with `cargo run --example protocol_dump`.
//!
//! Each line is `offset  bytes  # note`; a line that starts with `#` is a heading. Offsets count from the first byte of the length prefix,
//! which is also the origin FlatBuffers alignment is relative to. The notes come from walking the
//! buffer (root offset, vtables, tables, fields, vectors), so they follow the bytes.

use std::collections::BTreeMap;

use bytes::BytesMut;
use percore::protocol::{Op, Reply, RequestEncoder, ResponseEncoder};

/// How a table field is laid out and described.
enum Field {
    /// A scalar of `size` bytes; `names` label its values (an enum), if not empty.
    Scalar {
        name: &'static str,
        size: usize,
        names: &'static [&'static str],
    },
    /// An offset to a `[ubyte]` vector.
    Bytes(&'static str),
    /// An offset to a sub-table (a union member).
    Table(&'static str, &'static Layout),
}

/// A table type: its schema name and its fields in schema order (vtable slot order).
struct Layout {
    name: &'static str,
    fields: &'static [Field],
}

const OP_NAMES: &[&str] = &[
    "NONE", "Hello", "Ping", "Get", "Set", "Delete", "Compute", "Stats",
];
const REPLY_NAMES: &[&str] = &[
    "NONE",
    "HelloReply",
    "PingReply",
    "Value",
    "Digest",
    "StatsReply",
];
const STATUS_NAMES: &[&str] = &[
    "Ok",
    "NotFound",
    "BadRequest",
    "TooLarge",
    "Overloaded",
    "ShuttingDown",
    "Internal",
];

const PING: Layout = Layout {
    name: "Ping",
    fields: &[Field::Bytes("payload")],
};
const REQUEST: Layout = Layout {
    name: "Request",
    fields: &[
        Field::Scalar {
            name: "id",
            size: 8,
            names: &[],
        },
        Field::Scalar {
            name: "op_type",
            size: 1,
            names: OP_NAMES,
        },
        Field::Table("op", &PING),
    ],
};
const PING_REPLY: Layout = Layout {
    name: "PingReply",
    fields: &[Field::Bytes("payload")],
};
const RESPONSE: Layout = Layout {
    name: "Response",
    fields: &[
        Field::Scalar {
            name: "id",
            size: 8,
            names: &[],
        },
        Field::Scalar {
            name: "status",
            size: 1,
            names: STATUS_NAMES,
        },
        Field::Scalar {
            name: "body_type",
            size: 1,
            names: REPLY_NAMES,
        },
        Field::Table("body", &PING_REPLY),
        Field::Bytes("error"),
    ],
};

/// Byte ranges of one frame with a note each; what no range covers is padding.
struct Annotator<'a> {
    buf: &'a [u8],
    notes: BTreeMap<usize, (usize, String)>,
}

impl<'a> Annotator<'a> {
    fn uint(&self, pos: usize, size: usize) -> u64 {
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(&self.buf[pos..pos + size]);
        u64::from_le_bytes(le)
    }

    fn note(&mut self, pos: usize, len: usize, text: String) {
        self.notes.entry(pos).or_insert((len, text));
    }

    /// Annotates the table at `pos`, its vtable and everything it points to.
    fn table(&mut self, pos: usize, layout: &Layout) {
        let soffset = self.uint(pos, 4) as u32 as i32;
        let vtable = (pos as i64 - i64::from(soffset)) as usize;
        self.note(
            pos,
            4,
            format!(
                "{} table: soffset {soffset} to its vtable at {vtable:#06x}",
                layout.name
            ),
        );
        let vtable_len = self.uint(vtable, 2) as usize;
        self.note(
            vtable,
            2,
            format!("vtable of {}: {vtable_len} bytes", layout.name),
        );
        let table_len = self.uint(vtable + 2, 2);
        self.note(
            vtable + 2,
            2,
            format!("  {} table: {table_len} bytes", layout.name),
        );
        for (slot, field) in layout.fields.iter().enumerate() {
            let entry = vtable + 4 + 2 * slot;
            let name = match field {
                Field::Scalar { name, .. } | Field::Bytes(name) | Field::Table(name, _) => *name,
            };
            let voffset = if entry + 2 <= vtable + vtable_len {
                self.uint(entry, 2) as usize
            } else {
                0
            };
            if entry + 2 <= vtable + vtable_len {
                let text = match voffset {
                    0 => format!("  {name}: absent (default)"),
                    v => format!("  {name}: at table + {v}"),
                };
                self.note(entry, 2, text);
            }
            if voffset == 0 {
                continue;
            }
            let at = pos + voffset;
            match field {
                Field::Scalar { size, names, .. } => {
                    let value = self.uint(at, *size);
                    let label = names
                        .get(value as usize)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    self.note(
                        at,
                        *size,
                        format!("{}.{name} = {value}{label}", layout.name),
                    );
                }
                Field::Bytes(_) => {
                    let target = at + self.uint(at, 4) as usize;
                    self.note(
                        at,
                        4,
                        format!("{}.{name}: uoffset to vector at {target:#06x}", layout.name),
                    );
                    let len = self.uint(target, 4) as usize;
                    self.note(target, 4, format!("vector length: {len}"));
                    let bytes = &self.buf[target + 4..target + 4 + len];
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    self.note(target + 4, len, format!("  {text:?}"));
                }
                Field::Table(_, sub) => {
                    let target = at + self.uint(at, 4) as usize;
                    self.note(
                        at,
                        4,
                        format!("{}.{name}: uoffset to table at {target:#06x}", layout.name),
                    );
                    self.table(target, sub);
                }
            }
        }
    }

    /// Annotates a whole size-prefixed frame whose root has `layout`.
    fn frame(buf: &'a [u8], layout: &Layout) -> Annotator<'a> {
        let mut a = Annotator {
            buf,
            notes: BTreeMap::new(),
        };
        let len = a.uint(0, 4);
        a.note(0, 4, format!("length prefix: {len} bytes follow"));
        let root = 4 + a.uint(4, 4) as usize;
        a.note(4, 4, format!("root uoffset: root table at {root:#06x}"));
        let ident = String::from_utf8_lossy(&buf[8..12]).into_owned();
        a.note(8, 4, format!("file identifier {ident:?}"));
        a.table(root, layout);
        a
    }

    /// The dump: one line per annotated range (8 bytes at most per line), gaps as padding.
    fn render(&self) -> String {
        let mut lines = Vec::new();
        let mut line = |pos: usize, bytes: &[u8], note: &str| {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            lines.push(format!("{pos:04x}  {:<23}  # {note}", hex.join(" ")));
        };
        let mut pos = 0;
        let ranges = self
            .notes
            .iter()
            .map(|(&at, (len, text))| (at, *len, text.as_str()));
        let end = std::iter::once((self.buf.len(), 0, ""));
        for (at, len, text) in ranges.chain(end) {
            if at > pos {
                line(pos, &self.buf[pos..at], "padding");
            }
            let at = at.max(pos);
            for (i, chunk) in self.buf[at..at + len].chunks(8).enumerate() {
                line(at + 8 * i, chunk, if i == 0 { text } else { "" });
            }
            pos = pos.max(at + len);
        }
        lines.join("\n")
    }
}

fn main() {
    let mut request = BytesMut::new();
    RequestEncoder::new().encode(1, &Op::Ping { payload: b"ping" }, &mut request);
    let mut response = BytesMut::new();
    ResponseEncoder::new().ok(1, &Reply::Ping { payload: b"ping" }, &mut response);

    println!(
        "# Ping request: id 1, payload \"ping\", {} bytes",
        request.len()
    );
    println!("{}", Annotator::frame(&request, &REQUEST).render());
    println!();
    println!(
        "# its reply: id 1, status Ok, PingReply \"ping\", {} bytes",
        response.len()
    );
    println!("{}", Annotator::frame(&response, &RESPONSE).render());
}
