//! Incremental decoding of ADO's list envelope, `{"count": n, "value": [...]}`, as its bytes
//! arrive.
//!
//! A big pool's jobrequests answer is tens of MB, nearly all of it `matchedAgents`. Buffering
//! it whole before decoding would make the scaler's peak memory a multiple of the largest
//! answer. [`ListDecoder`] keeps only the elements not yet decoded: each element of `value`
//! is handed out, borrowed from the buffer, as soon as its last byte is in. serde_json does
//! all the parsing; this module only walks the envelope's punctuation between its values.

use serde::{Deserialize, de::IgnoredAny};

/// Bytes gathered before decoding is tried. An element cut off at the end of the buffer is
/// parsed again once more bytes are in, so the batch is kept large against the elements
/// (a big pool's job request with 200 matched agents is ~85 KB): the reparsing then costs a
/// few percent, and the buffer stays around a MiB whatever the answer's size.
const BATCH: usize = 1 << 20;

/// Why an answer is not a list envelope. Says where, never quotes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} at byte {at}")]
    Syntax { what: String, at: u64 },
    #[error("element {index} of `value` (at byte {at}): {reason}")]
    Element {
        index: usize,
        at: u64,
        reason: String,
    },
    #[error("the answer ended {0}")]
    Truncated(&'static str),
    #[error("the answer has no `value` array")]
    NoValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the envelope's `{`.
    Open,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,`: a key.
    Key,
    /// After a key: `:`. `true` when the key is `value`.
    Colon(bool),
    /// After `:`, the field's value.
    FieldValue(bool),
    /// After a field's value: `,` or `}`.
    AfterField,
    /// After `[`: an element or `]`.
    FirstElement,
    /// After `,` in the array: an element.
    Element,
    /// After an element: `,` or `]`.
    AfterElement,
    /// After the envelope's `}`: only whitespace may follow.
    Done,
}

/// What the next step of decoding found.
pub enum Next<T> {
    /// An element of `value`.
    Element(T),
    /// Feed more bytes (or [`ListDecoder::finish`]).
    NeedMore,
    /// The envelope is complete.
    Done,
}

/// Decodes one list envelope fed in chunks of any size. See the module documentation.
///
/// ```text
/// loop { decoder.feed(chunk); while let Next::Element(e) = decoder.next::<T>()? { … } }
/// decoder.finish(); while let Next::Element(e) = decoder.next::<T>()? { … }
/// ```
#[derive(Debug)]
pub struct ListDecoder {
    buf: Vec<u8>,
    /// Where decoding stands in `buf`.
    pos: usize,
    /// Bytes of the answer dropped from the front of `buf`, for error positions.
    dropped: u64,
    state: State,
    /// No more bytes will come.
    ended: bool,
    /// Unread bytes wanted before the next attempt: [`BATCH`], or more after an element
    /// did not fit.
    want: usize,
    elements: usize,
    seen_value: bool,
    /// Decoding what is buffered, until something is cut off.
    running: bool,
    /// Bytes parsed for an element that turned out cut off, and parsed again later.
    reparsed: u64,
    /// Bytes moved to the front of the buffer when decoded ones were dropped.
    moved: u64,
}

impl Default for ListDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ListDecoder {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            dropped: 0,
            state: State::Open,
            ended: false,
            want: BATCH,
            elements: 0,
            seen_value: false,
            running: false,
            reparsed: 0,
            moved: 0,
        }
    }

    /// Appends the next bytes of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // Keep only what is not decoded yet; it is less than what is dropped.
            self.buf.drain(..self.pos);
            self.moved += self.buf.len() as u64;
            self.dropped += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Says that the answer is complete: what is buffered is decoded whatever its size.
    pub fn finish(&mut self) {
        self.ended = true;
    }

    /// Feeds `chunk` (`None`: the answer is complete) and puts every element now decodable
    /// into `sink`. After `None`, `Ok` means the whole envelope was decoded.
    pub fn push<S: Sink>(&mut self, chunk: Option<&[u8]>, sink: &mut S) -> Result<(), DecodeError> {
        match chunk {
            Some(bytes) => self.feed(bytes),
            None => self.finish(),
        }
        let ended = self.ended;
        loop {
            match self.next::<S::Element<'_>>()? {
                Next::Element(element) => sink.push(element),
                // After the end, `next` has either failed or finished; never take an
                // answer that stopped short for a whole one.
                Next::NeedMore if ended => {
                    return Err(DecodeError::Truncated("before it was complete"));
                }
                Next::NeedMore | Next::Done => return Ok(()),
            }
        }
    }

    /// Elements of `value` handed out so far.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Bytes held: the largest answer's cost in memory is this, not the answer's size.
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// The decoder's overhead on top of one parse of the answer: bytes parsed twice (an
    /// element cut off at the end of the buffer) and bytes moved within the buffer.
    pub fn overhead(&self) -> (u64, u64) {
        (self.reparsed, self.moved)
    }

    /// The next element of `value`, borrowed from the buffer where serde allows it.
    ///
    /// `NeedMore` until enough bytes are buffered; after [`finish`](Self::finish), an answer
    /// that stops short is an error rather than `NeedMore`.
    pub fn next<'de, T: Deserialize<'de>>(&'de mut self) -> Result<Next<T>, DecodeError> {
        if !self.ended && !self.running && self.buf.len() - self.pos < self.want {
            return Ok(Next::NeedMore);
        }
        // Once started, a run decodes all that is buffered, so that little is kept over.
        self.running = true;
        loop {
            self.pos += self.buf[self.pos..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            let Some(&byte) = self.buf.get(self.pos) else {
                return self.at_end();
            };
            let at = self.dropped + self.pos as u64;
            let unexpected = |expected: &str| DecodeError::Syntax {
                what: format!("expected {expected}, found {:?}", char::from(byte)),
                at,
            };
            self.state = match (self.state, byte) {
                (State::Open, b'{') => State::FirstKey,
                (State::Open, _) => return Err(unexpected("`{`")),
                (State::FirstKey, b'}') | (State::AfterField, b'}') => State::Done,
                (State::FirstKey | State::Key, b'"') => {
                    // Owned: a key may carry an escape (`"co\nt"`), which cannot be borrowed;
                    // the envelope has two keys a page, so the copy costs nothing.
                    let Some((key, used)) = parse_one::<String>(&self.buf[self.pos..], self.ended)
                        .map_err(|e| syntax(&e, at))?
                    else {
                        return self.incomplete();
                    };
                    let is_value = key == "value";
                    if is_value && std::mem::replace(&mut self.seen_value, true) {
                        return Err(DecodeError::Syntax {
                            what: "a second `value` field".into(),
                            at,
                        });
                    }
                    self.pos += used;
                    self.state = State::Colon(is_value);
                    continue;
                }
                (State::FirstKey, _) => return Err(unexpected("a key or `}`")),
                (State::Key, _) => return Err(unexpected("a key")),
                (State::Colon(v), b':') => State::FieldValue(v),
                (State::Colon(_), _) => return Err(unexpected("`:`")),
                (State::FieldValue(true), b'[') => State::FirstElement,
                (State::FieldValue(true), _) => {
                    return Err(unexpected("`[` (`value` must be an array)"));
                }
                (State::FieldValue(false), _) => {
                    let Some((IgnoredAny, used)) =
                        parse_one::<IgnoredAny>(&self.buf[self.pos..], self.ended)
                            .map_err(|e| syntax(&e, at))?
                    else {
                        return self.incomplete();
                    };
                    self.pos += used;
                    self.state = State::AfterField;
                    continue;
                }
                (State::AfterField, b',') => State::Key,
                (State::AfterField, _) => return Err(unexpected("`,` or `}`")),
                (State::FirstElement, b']') | (State::AfterElement, b']') => State::AfterField,
                (State::FirstElement | State::Element, _) => {
                    let parsed = parse_one::<T>(&self.buf[self.pos..], self.ended);
                    let Some((element, used)) = parsed.map_err(|e| match e.is_eof() {
                        true => DecodeError::Truncated("inside `value`"),
                        false => DecodeError::Element {
                            index: self.elements,
                            at,
                            reason: without_values(&e),
                        },
                    })?
                    else {
                        // Not all in yet: try again once the buffer holds twice as much.
                        self.reparsed += (self.buf.len() - self.pos) as u64;
                        self.want = self.want.max(2 * (self.buf.len() - self.pos));
                        self.running = false;
                        return Ok(Next::NeedMore);
                    };
                    self.pos += used;
                    self.elements += 1;
                    self.state = State::AfterElement;
                    return Ok(Next::Element(element));
                }
                (State::AfterElement, b',') => State::Element,
                (State::AfterElement, _) => return Err(unexpected("`,` or `]`")),
                (State::Done, _) => {
                    return Err(DecodeError::Syntax {
                        what: "data after the end of the answer".into(),
                        at,
                    });
                }
            };
            self.pos += 1;
        }
    }

    /// All buffered bytes are decoded.
    fn at_end<T>(&mut self) -> Result<Next<T>, DecodeError> {
        match (self.state, self.ended) {
            (State::Done, _) if !self.seen_value => Err(DecodeError::NoValue),
            (State::Done, _) => Ok(Next::Done),
            (_, false) => {
                self.running = false;
                Ok(Next::NeedMore)
            }
            (State::Open, true) => Err(DecodeError::Truncated("before it began")),
            (State::FirstElement | State::Element | State::AfterElement, true) => {
                Err(DecodeError::Truncated("inside `value`"))
            }
            (_, true) => Err(DecodeError::Truncated("before the closing `}`")),
        }
    }

    /// A key or field value is cut off at the end of the buffer.
    fn incomplete<T>(&mut self) -> Result<Next<T>, DecodeError> {
        if self.ended {
            Err(DecodeError::Truncated("inside a field"))
        } else {
            self.running = false;
            Ok(Next::NeedMore)
        }
    }
}

/// One JSON value from the front of `bytes` and the bytes it took; `None` if it may be cut
/// off (it runs to the end of what is buffered and more is coming: `12` may be `123`).
fn parse_one<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    ended: bool,
) -> Result<Option<(T, usize)>, serde_json::Error> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match values.next() {
        Some(Ok(value)) => {
            let used = values.byte_offset();
            Ok((ended || used < bytes.len()).then_some((value, used)))
        }
        Some(Err(e)) if e.is_eof() && !ended => Ok(None),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

fn syntax(e: &serde_json::Error, at: u64) -> DecodeError {
    if e.is_eof() {
        return DecodeError::Truncated("inside a field");
    }
    DecodeError::Syntax {
        what: without_values(e),
        at,
    }
}

/// serde_json's message without the value it quotes (`invalid type: string "…"`): errors
/// reach logs and KEDA, and an answer's strings are not ours to repeat.
fn without_values(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let quoted = message
        .split_once('"')
        .and_then(|(head, rest)| Some((head, rest.rsplit_once('"')?.1)));
    match quoted {
        Some((head, tail)) => format!("{head}\"…\"{tail}"),
        None => message,
    }
}

/// Where [`decode_chunked`] puts elements: their type may borrow from the answer's bytes.
pub trait Sink {
    type Element<'de>: Deserialize<'de>;
    fn push(&mut self, element: Self::Element<'_>);
}

impl<T: serde::de::DeserializeOwned> Sink for Vec<T> {
    type Element<'de> = T;
    fn push(&mut self, element: T) {
        Vec::push(self, element);
    }
}

/// Decodes a whole answer held in memory, fed in chunks of `chunk` bytes as a network read
/// would, into `sink`; the number of elements. The tests and fuzz target drive the decoder
/// through this.
pub fn decode_chunked<S: Sink>(
    body: &[u8],
    chunk: usize,
    sink: &mut S,
) -> Result<usize, DecodeError> {
    let mut decoder = ListDecoder::new();
    for bytes in body.chunks(chunk.max(1)) {
        decoder.push(Some(bytes), sink)?;
    }
    decoder.push(None, sink)?;
    Ok(decoder.elements())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn decode(body: &str, chunk: usize) -> Result<Vec<Value>, DecodeError> {
        let mut out: Vec<Value> = Vec::new();
        decode_chunked(body.as_bytes(), chunk, &mut out).map(|n| {
            assert_eq!(n, out.len());
            out
        })
    }

    /// Every chunk size from 1 byte to the whole body gives the same answer.
    fn decode_all_ways(body: &str) -> Result<Vec<Value>, DecodeError> {
        let whole = decode(body, body.len());
        for chunk in 1..body.len() {
            assert_eq!(decode(body, chunk), whole, "chunks of {chunk}");
        }
        whole
    }

    #[test]
    fn elements_come_out_whatever_the_chunking() {
        let body = r#" { "count" : 3, "extra": {"a":[1,{"b":"]}"}]}, "value" : [ {"id":1,"s":"a\"}b"},
            {"id":22} ,{"id":3,"nested":[[],{}]} ] , "tail": 12345 } "#;
        let got = decode_all_ways(body).unwrap();
        let ids: Vec<i64> = got.iter().map(|v| v["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [1, 22, 3]);
        assert_eq!(got[0]["s"], "a\"}b");
        assert_eq!(
            decode_all_ways(r#"{"value":[]}"#).unwrap(),
            Vec::<Value>::new()
        );
        assert_eq!(
            decode_all_ways(r#"{"value":[7]}"#).unwrap(),
            [Value::from(7)]
        );
    }

    #[test]
    fn a_number_at_the_end_of_a_chunk_waits_for_its_last_digit() {
        // Cut after `12`: the field is 12345, and must not be read as 12 then fail on `345`.
        let mut decoder = ListDecoder::new();
        decoder.want = 0;
        decoder.feed(br#"{"count":12"#);
        assert!(matches!(decoder.next::<Value>(), Ok(Next::NeedMore)));
        decoder.feed(br#"345,"value":[5]}"#);
        assert!(matches!(decoder.next::<Value>(), Ok(Next::Element(v)) if v == 5));
        decoder.finish();
        assert!(matches!(decoder.next::<Value>(), Ok(Next::Done)));
    }

    /// Escapes in the envelope's keys are valid JSON: found by the property test (a byte of
    /// `"count"` flipped to a backslash, making `"co\nt"`).
    #[test]
    fn keys_with_escapes_are_read_like_any_other() {
        assert_eq!(
            decode_all_ways(r#"{"co\nt":0,"value":[1]}"#).unwrap(),
            [Value::from(1)]
        );
        assert_eq!(
            decode_all_ways(r#"{"\u0076alue":[2],"count":1}"#).unwrap(),
            [Value::from(2)],
            "an escaped `value` is `value`"
        );
    }

    #[test]
    fn bad_answers_fail_naming_what_and_where() {
        let cases: &[(&str, &str)] = &[
            ("", "the answer ended before it began"),
            ("  ", "the answer ended before it began"),
            ("[1]", "expected `{`, found '[' at byte 0"),
            (r#"{"count":1}"#, "the answer has no `value` array"),
            (
                r#"{"value":{}}"#,
                "expected `[` (`value` must be an array), found '{' at byte 9",
            ),
            (r#"{"value":[1,2"#, "the answer ended inside `value`"),
            (r#"{"value":[{"a":1"#, "the answer ended inside `value`"),
            (r#"{"value":[{"a":"x"#, "the answer ended inside `value`"),
            (r#"{"value":[1,"#, "the answer ended inside `value`"),
            (
                r#"{"value":[1 2]}"#,
                "expected `,` or `]`, found '2' at byte 12",
            ),
            (r#"{"value":[1]"#, "the answer ended before the closing `}`"),
            (
                r#"{"value":[1]}x"#,
                "data after the end of the answer at byte 13",
            ),
            (
                r#"{"value":[1],"value":[2]}"#,
                "a second `value` field at byte 13",
            ),
            (
                r#"{"count":1,"value":[{"a":}]}"#,
                "element 0 of `value` (at byte 20)",
            ),
            (r#"{"value":[],"count":tru}"#, "at byte 20"),
            (r#"{"value":[], "cou"#, "the answer ended inside a field"),
            (
                r#"{"value":[], "count""#,
                "the answer ended before the closing `}`",
            ),
            (
                r#"{"value":[] "count":1}"#,
                "expected `,` or `}`, found '\"' at byte 12",
            ),
            (r#"{"value"=[]}"#, "expected `:`, found '=' at byte 8"),
            (r#"{1:2}"#, "expected a key or `}`, found '1' at byte 1"),
            (r#"{"count":1,}"#, "expected a key, found '}' at byte 11"),
        ];
        for (body, want) in cases {
            let whole = decode(body, body.len().max(1)).expect_err(body).to_string();
            assert!(whole.contains(want), "{body}: {whole}");
            for chunk in 1..body.len() {
                let err = decode(body, chunk).expect_err(body).to_string();
                assert!(err.contains(want), "{body} in chunks of {chunk}: {err}");
            }
        }
    }

    #[test]
    fn errors_do_not_repeat_the_answer_s_strings() {
        let body = r#"{"value":[{"requestId":"secret-ish \"value\" here"}]}"#;
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct Request {
            request_id: u64,
        }
        let mut out: Vec<Request> = Vec::new();
        let err = decode_chunked(body.as_bytes(), 7, &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("element 0 of `value`"), "{err}");
        assert!(
            err.contains("invalid type: string \"…\", expected u64"),
            "{err}"
        );
        assert!(!err.contains("secret") && !err.contains("here"), "{err}");
        let no_quotes = r#"{"value":[{"requestId":-}]}"#;
        let err = decode_chunked(no_quotes.as_bytes(), 7, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("at line 1 column"),
            "serde's position stays: {err}"
        );
    }

    #[test]
    fn memory_stays_near_a_batch_whatever_the_answer_size() {
        let element = format!(r#"{{"pad":"{}"}}"#, "x".repeat(10_000));
        let body = format!(
            r#"{{"count":2500,"value":[{}]}}"#,
            vec![element; 2500].join(",")
        );
        let mut decoder = ListDecoder::new();
        let mut seen = 0;
        let mut peak = 0;
        for chunk in body.as_bytes().chunks(16 << 10) {
            decoder.feed(chunk);
            while let Next::Element(IgnoredAny) = decoder.next::<IgnoredAny>().unwrap() {
                seen += 1;
            }
            peak = peak.max(decoder.buffered());
        }
        decoder.finish();
        while let Next::Element(IgnoredAny) = decoder.next::<IgnoredAny>().unwrap() {
            seen += 1;
        }
        assert!(matches!(decoder.next::<IgnoredAny>(), Ok(Next::Done)));
        assert_eq!(seen, 2500);
        assert!(body.len() > 20 * BATCH);
        assert!(
            (BATCH..=3 * BATCH).contains(&peak),
            "{peak} bytes buffered for {}",
            body.len()
        );
    }

    #[test]
    fn a_big_pool_s_answer_is_parsed_about_once() {
        // Elements of ~85 KB (a job with 200 matched agents) in 16 KiB reads, as over TLS.
        let element = format!(r#"{{"agents":["{}"]}}"#, "a".repeat(85_000));
        let body = format!(r#"{{"value":[{}]}}"#, vec![element; 600].join(","));
        let mut decoder = ListDecoder::new();
        let mut sink: Vec<IgnoredAny> = Vec::new();
        for chunk in body.as_bytes().chunks(16 << 10) {
            decoder.push(Some(chunk), &mut sink).unwrap();
        }
        decoder.push(None, &mut sink).unwrap();
        assert_eq!(sink.len(), 600);
        let (reparsed, moved) = decoder.overhead();
        let size = body.len() as u64;
        assert!(
            reparsed > 0 && reparsed < size / 10,
            "{reparsed} of {size} parsed twice"
        );
        assert!(moved > 0 && moved < size / 10, "{moved} of {size} moved");
    }

    #[test]
    fn error_positions_count_the_bytes_already_dropped() {
        // Three batches of good elements, then a bad one: its position is in the whole answer.
        let good = format!(r#"{{"pad":"{}"}},"#, "x".repeat(1000));
        let head = format!(r#"{{"value":[{}"#, good.repeat(3 * BATCH / good.len()));
        let body = format!("{head}{{\"pad\":]}}");
        let mut out: Vec<Value> = Vec::new();
        let err = decode_chunked(body.as_bytes(), 4096, &mut out).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Element {
                index: out.len(),
                at: head.len() as u64,
                reason: "expected value at line 1 column 8".into(),
            }
        );
        assert!(out.len() > 3000);
    }

    #[test]
    fn an_element_larger_than_a_batch_is_parsed_a_bounded_number_of_times() {
        let big = format!(r#"{{"value":["{}",1]}}"#, "y".repeat(4 * BATCH));
        let mut decoder = ListDecoder::new();
        let mut attempts = 0;
        let mut got = Vec::new();
        for chunk in big.as_bytes().chunks(8 << 10) {
            decoder.feed(chunk);
            loop {
                let before = decoder.want;
                match decoder.next::<Value>().unwrap() {
                    Next::Element(v) => got.push(v),
                    Next::NeedMore => {
                        attempts += usize::from(decoder.want != before);
                        break;
                    }
                    Next::Done => unreachable!(),
                }
            }
        }
        decoder.finish();
        while let Next::Element(v) = decoder.next::<Value>().unwrap() {
            got.push(v);
        }
        assert_eq!(got.len(), 2);
        assert!(attempts <= 4, "{attempts} partial parses of one element");
    }
}
