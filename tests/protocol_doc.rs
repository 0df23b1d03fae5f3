//! Keeps `docs/protocol.md` honest: the hex dumps of the example `Ping` request and reply (the
//! fenced blocks tagged `hex request` and `hex response`) must be byte for byte what
//! `RequestEncoder` and `ResponseEncoder` write today, and the code tables marked
//! `<!-- codes: ... -->` must list exactly the schema's enum and union values. A change to the
//! schema or the encoders that the document does not follow fails here; regenerate the dumps with
//! `cargo run --example protocol_dump` and paste them into the document.

use bytes::BytesMut;
use percore::protocol::{
    fb, Op, Reply, ReplyView, Request, RequestEncoder, ResponseEncoder, ResponseView, Status,
};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");

fn doc() -> String {
    std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("cannot read {DOC_PATH}: {e}"))
}

/// The lines of the one fenced block opened by ```` ```{tag} ````.
fn fenced_block<'a>(doc: &'a str, tag: &str) -> Result<Vec<&'a str>, String> {
    let opening = format!("```{tag}");
    let mut lines = doc.lines();
    let mut blocks = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim_end() == opening {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body);
        }
    }
    match blocks.len() {
        1 => Ok(blocks.remove(0)),
        n => Err(format!(
            "expected one ```{tag} block in the document, found {n}"
        )),
    }
}

/// The bytes of an annotated dump: `offset  hex bytes  # note` lines, `#` lines are headings.
/// Each offset must be the number of bytes before it, so a dropped or repeated line is caught.
fn dump_bytes(lines: &[&str]) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for line in lines {
        let data = line.split('#').next().unwrap_or_default().trim();
        if data.is_empty() {
            continue;
        }
        let mut tokens = data.split_whitespace();
        let offset = tokens.next().unwrap_or_default();
        let offset = usize::from_str_radix(offset, 16)
            .map_err(|_| format!("line {line:?}: `{offset}` is not a hex offset"))?;
        if offset != bytes.len() {
            return Err(format!(
                "line {line:?}: offset {offset:#06x}, but {:#06x} bytes precede it",
                bytes.len()
            ));
        }
        for token in tokens {
            let byte = (token.len() == 2)
                .then(|| u8::from_str_radix(token, 16).ok())
                .flatten()
                .ok_or_else(|| format!("line {line:?}: `{token}` is not one hex byte"))?;
            bytes.push(byte);
        }
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(" ")
}

/// Checks the dump tagged `tag` in `doc` against `expected`.
fn check_dump(doc: &str, tag: &str, expected: &[u8]) -> Result<(), String> {
    let documented = dump_bytes(&fenced_block(doc, tag)?)?;
    if documented == expected {
        return Ok(());
    }
    Err(format!(
        "the ```{tag} dump in docs/protocol.md is stale\n  document: {}\n  encoder:  {}\n\
         regenerate it with `cargo run --example protocol_dump`",
        hex(&documented),
        hex(expected)
    ))
}

/// The example of the document, as the encoders write it today.
fn encoded_ping() -> (BytesMut, BytesMut) {
    let mut request = BytesMut::new();
    RequestEncoder::new().encode(1, &Op::Ping { payload: b"ping" }, &mut request);
    let mut response = BytesMut::new();
    ResponseEncoder::new().ok(1, &Reply::Ping { payload: b"ping" }, &mut response);
    (request, response)
}

fn check_dumps(doc: &str) -> Result<(), String> {
    let (request, response) = encoded_ping();
    check_dump(doc, "hex request", &request)?;
    check_dump(doc, "hex response", &response)
}

/// The `(code, name)` rows of the table that follows `<!-- codes: {name} -->`.
fn code_table(doc: &str, name: &str) -> Result<Vec<(u8, String)>, String> {
    let marker = format!("<!-- codes: {name} -->");
    let start = doc
        .find(&marker)
        .ok_or_else(|| format!("no `{marker}` in the document"))?;
    let rows = doc[start + marker.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let mut codes = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // A data row: `| code | `Name` | ... |`; the header and the separator have no number.
        let (Some(code), Some(label)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        if let Ok(code) = code.parse::<u8>() {
            codes.push((code, label.trim_matches('`').to_owned()));
        }
    }
    Ok(codes)
}

fn check_codes(doc: &str, name: &str, expected: Vec<(u8, &str)>) -> Result<(), String> {
    let documented = code_table(doc, name)?;
    let expected: Vec<(u8, String)> = expected
        .into_iter()
        .map(|(code, n)| (code, n.to_owned()))
        .collect();
    if documented == expected {
        Ok(())
    } else {
        Err(format!(
            "the {name} table in docs/protocol.md does not match the schema\n  document: \
             {documented:?}\n  schema:   {expected:?}"
        ))
    }
}

/// `(value, name)` of every value of a generated enum or union type.
macro_rules! schema_codes {
    ($t:ty) => {
        <$t>::ENUM_VALUES
            .iter()
            .map(|v| (v.0, v.variant_name().expect("a named value")))
            .collect::<Vec<_>>()
    };
}

#[test]
fn hex_dumps_match_the_encoders() {
    let doc = doc();
    if let Err(e) = check_dumps(&doc) {
        panic!("{e}");
    }

    // The documented bytes are a real exchange: they decode as the request and reply they claim.
    let request = dump_bytes(&fenced_block(&doc, "hex request").unwrap()).unwrap();
    let decoded = Request::decode(&request).expect("the documented request decodes");
    assert_eq!(decoded.id, 1);
    assert_eq!(decoded.op, Op::Ping { payload: b"ping" });
    let response = dump_bytes(&fenced_block(&doc, "hex response").unwrap()).unwrap();
    let view = ResponseView::decode(&response).expect("the documented reply decodes");
    assert_eq!((view.id, view.status, view.error), (1, Status::Ok, None));
    assert!(matches!(view.body, ReplyView::Ping { payload: b"ping" }));
}

#[test]
fn code_tables_match_the_schema() {
    let doc = doc();
    let checks = [
        check_codes(&doc, "Op", schema_codes!(fb::Op)),
        check_codes(&doc, "Reply", schema_codes!(fb::Reply)),
        check_codes(&doc, "Algo", schema_codes!(fb::Algo)),
        check_codes(&doc, "Status", schema_codes!(fb::Status)),
    ];
    let errors: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The checks above can fail: a document whose dump or table no longer matches is caught.
#[test]
fn a_stale_document_is_detected() {
    let doc = doc();
    // The request's id changes from 1 to 2, as if the example or the encoder had changed.
    let stale = doc.replacen(
        "0028  01 00 00 00 00 00 00 00  # Request.id = 1",
        "0028  02 00 00 00 00 00 00 00  # Request.id = 1",
        1,
    );
    assert_ne!(stale, doc, "the document shows Request.id at 0x0028");
    assert!(check_dumps(&stale).unwrap_err().contains("stale"));

    // A dropped line shifts every later offset.
    let dropped = doc.replacen(
        "0036  04 00                    #   payload: at table + 4\n",
        "",
        1,
    );
    assert_ne!(dropped, doc);
    assert!(check_dumps(&dropped).is_err());

    // A status renumbered in the document.
    let renumbered = doc.replacen("| 4 | `Overloaded` |", "| 7 | `Overloaded` |", 1);
    assert_ne!(renumbered, doc);
    assert!(check_codes(&renumbered, "Status", schema_codes!(fb::Status)).is_err());
}
