//! A reply's `return` value kept as raw JSON text, and decoded from that text straight into
//! the caller's type, without building a `serde_json::Value` tree first.
//!
//! Why: a guest controls its agent's replies. Inside the 512 KiB line limit,
//! `{"return":[{},{},...]}` holds 170,000 empty objects; as a `Value` tree and then as typed
//! structs that was 65-80 MB per hostile VM at every scrape. Decoding from the text costs no
//! tree at all, and [`decode_bounded`] keeps at most `max` elements of a list: the rest are
//! skipped as they are read ([`serde::de::IgnoredAny`] allocates nothing) and only counted.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::qmp::command_error;

/// A reply as the protocol frames it; `return` stays raw text.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, rename = "return")]
    ret: Option<&'a RawValue>,
    error: Option<Value>,
}

/// The raw `return` of one reply line (or the reply's error).
pub fn raw_return(bytes: &[u8], who: &str) -> Result<Box<RawValue>> {
    with_return(bytes, who, |ret| Ok(ret.to_owned()))
}

/// Calls `decode` with the `return` value of one reply line, borrowed from the line (a guest's
/// reply may be a 512 KiB line: it is not copied), or returns the reply's error.
pub fn with_return<T>(
    bytes: &[u8],
    who: &str,
    decode: impl FnOnce(&RawValue) -> Result<T>,
) -> Result<T> {
    let reply: Reply<'_> = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) if e.is_data() => {
            // Valid JSON of the wrong shape: say which (from its first byte: a line-long
            // array is not built into a tree to name it).
            let kind = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'[') => "an array",
                Some(b'{') => "an object",
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            };
            return Err(Error::Protocol(format!(
                "{who} sent {kind} instead of a reply"
            )));
        }
        Err(e) => return Err(Error::Json(e)),
    };
    match (reply.ret, reply.error) {
        (Some(ret), _) => decode(ret),
        (None, Some(error)) => Err(command_error(&error)),
        (None, None) => Err(Error::Protocol(format!(
            "{who}'s reply has neither \"return\" nor \"error\""
        ))),
    }
}

/// Decodes a raw `return` into `T`; a mismatch names the command.
pub fn decode<T: DeserializeOwned>(command: &str, raw: &RawValue) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|source| Error::Decode {
        command: command.to_string(),
        source,
    })
}

/// At most `max` elements of a list, and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded<T> {
    pub items: Vec<T>,
    /// Elements past `max`, skipped unread.
    pub skipped: usize,
}

struct BoundedSeed<T> {
    max: usize,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedSeed<T> {
    type Value = Bounded<T>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Bounded<T>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeed<T> {
    type Value = Bounded<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Bounded<T>, A::Error> {
        // Never trust a size hint from the peer for the allocation.
        let mut items = Vec::with_capacity(self.max.min(64));
        let mut skipped = 0usize;
        while items.len() < self.max {
            match seq.next_element::<T>()? {
                Some(item) => items.push(item),
                None => return Ok(Bounded { items, skipped }),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            skipped += 1;
        }
        Ok(Bounded { items, skipped })
    }
}

/// For `#[serde(deserialize_with)]`: an optional list inside a reply, of which at most `N`
/// elements are kept and the rest skipped unread (a guest can make such a list as long as the
/// line allows: 174,000 empty strings decode to 4 MB of `String`s).
pub fn at_most<'de, D, T, const N: usize>(d: D) -> std::result::Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OptionalList<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for OptionalList<T, N> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list or null")
        }

        fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: serde::Deserializer<'de>>(
            self,
            d: D2,
        ) -> std::result::Result<Self::Value, D2::Error> {
            let seed = BoundedSeed {
                max: N,
                _t: PhantomData,
            };
            seed.deserialize(d).map(|b| Some(b.items))
        }
    }

    d.deserialize_option(OptionalList::<T, N>(PhantomData))
}

/// Decodes a raw list into at most `max` elements of `T`, counting the rest.
pub fn decode_bounded<T: DeserializeOwned>(
    command: &str,
    raw: &RawValue,
    max: usize,
) -> Result<Bounded<T>> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let seed = BoundedSeed {
        max,
        _t: PhantomData,
    };
    let out = seed.deserialize(&mut de).map_err(|source| Error::Decode {
        command: command.to_string(),
        source,
    })?;
    de.end().map_err(|source| Error::Decode {
        command: command.to_string(),
        source,
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Disk {
        name: Option<String>,
    }

    #[test]
    fn keeps_max_and_counts_the_rest_of_a_huge_list() {
        let mut line = String::from(r#"{"return":["#);
        for i in 0..170_000 {
            if i > 0 {
                line.push(',');
            }
            line.push_str("{}");
        }
        line.push_str("]}");
        let raw = raw_return(line.as_bytes(), "the agent").unwrap();
        let b: Bounded<Disk> = decode_bounded("guest-get-diskstats", &raw, 64).unwrap();
        assert_eq!(b.items.len(), 64);
        assert_eq!(b.skipped, 170_000 - 64);
        let small = raw_return(br#"{"return":[{"name":"vda"}]}"#, "x").unwrap();
        let b: Bounded<Disk> = decode_bounded("c", &small, 64).unwrap();
        assert_eq!(
            (b.items, b.skipped),
            (
                vec![Disk {
                    name: Some("vda".into())
                }],
                0
            )
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct WithList {
        #[serde(default, deserialize_with = "at_most::<_, _, 2>")]
        list: Option<Vec<String>>,
    }

    #[test]
    fn at_most_keeps_n_of_an_optional_list() {
        let parse = |s: &str| serde_json::from_str::<WithList>(s).unwrap().list;
        assert_eq!(
            parse(r#"{"list": ["a", "b", "c", ""]}"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse(r#"{"list": ["a"]}"#), Some(vec!["a".into()]));
        assert_eq!(parse(r#"{"list": null}"#), None);
        assert_eq!(parse("{}"), None);
        assert!(serde_json::from_str::<WithList>(r#"{"list": 5}"#).is_err());
    }

    #[test]
    fn replies_and_their_errors() {
        let e =
            raw_return(br#"{"error":{"class":"CommandNotFound","desc":"no"}}"#, "x").unwrap_err();
        assert_eq!(e.command_class(), Some("CommandNotFound"));
        assert!(matches!(raw_return(b"[1]", "x"), Err(Error::Protocol(_))));
        assert!(matches!(raw_return(b"{}", "x"), Err(Error::Protocol(_))));
        assert!(matches!(raw_return(b"{", "x"), Err(Error::Json(_))));
        let raw = raw_return(br#"{"return": 5}"#, "x").unwrap();
        assert!(matches!(
            decode_bounded::<Disk>("c", &raw, 3),
            Err(Error::Decode { .. })
        ));
        assert_eq!(decode::<i64>("c", &raw).unwrap(), 5);
    }
}
