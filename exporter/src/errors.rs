//! How the exporter prints an error: the error's own message, then each `source()` in turn,
//! on one line. Every error type here (and in kvmio-qemu) keeps its inner error in `#[source]`
//! and out of its own message, so nothing is repeated and nothing needs deduplicating.

/// `outer: inner: innermost`, in one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the results")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_message_once() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such\nfile",
        ));
        assert_eq!(chain(&e), "reading the results: no such file");
    }
}
