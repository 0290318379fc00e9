//! Tracepoint record layouts, from tracefs `events/<category>/<name>/format`.
//!
//! Unlike the syscall tracepoints, `sock:inet_sock_set_state` and
//! `tcp:tcp_retransmit_skb` are not a stable ABI: fields were added over the
//! years (6.18's `tcp_retransmit_skb` has `state` and `err`), so programs read
//! each field at the offset the running kernel's format file gives.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};

/// One field: offset and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

pub struct Format {
    event: String,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Reads the format of `category:name` from the mounted tracefs.
    pub fn read(category: &str, name: &str) -> Result<Format> {
        let mut last = None;
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            let path = format!("{root}/events/{category}/{name}/format");
            match std::fs::read_to_string(&path) {
                Ok(text) => return Format::parse(&format!("{category}:{name}"), &text),
                Err(e) => last = Some((path, e)),
            }
        }
        let (path, e) = last.unwrap();
        Err(e).with_context(|| format!("reading {path} (tracepoint {category}:{name})"))
    }

    /// Parses lines like `field:__u16 sport; offset:24; size:2; signed:0;`
    /// (tab-separated in the kernel's files).
    pub fn parse(event: &str, text: &str) -> Result<Format> {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(decl) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = decl.split(';').map(str::trim);
            let Some(decl) = parts.next() else { continue };
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the last word of the declaration, without `[N]`.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("");
            if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        if fields.is_empty() {
            bail!("no fields in the format of {event}");
        }
        Ok(Format {
            event: event.to_string(),
            fields,
        })
    }

    /// The offset of `name`, checking its size (the programs read it with a
    /// fixed width).
    /// Whether the record has a field of that name (of any size).
    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    pub fn offset(&self, name: &str, size: u32) -> Result<u32> {
        let f = self
            .fields
            .get(name)
            .with_context(|| format!("{} has no field {name} on this kernel", self.event))?;
        if f.size != size {
            bail!(
                "{}: field {name} is {} bytes on this kernel, expected {size}",
                self.event,
                f.size
            );
        }
        Ok(f.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 6.1's layout: no `err`, `state` after the addresses.
    const RETRANS_61: &str = "name: tcp_retransmit_skb
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn fields_pointers_and_arrays() {
        let f = Format::parse("tcp:tcp_retransmit_skb", RETRANS_61).unwrap();
        assert_eq!(f.offset("skaddr", 8).unwrap(), 16);
        assert_eq!(f.offset("state", 4).unwrap(), 24);
        assert_eq!(f.offset("saddr", 4).unwrap(), 34);
        assert_eq!(f.offset("daddr", 4).unwrap(), 38);
        assert_eq!(f.offset("common_pid", 4).unwrap(), 4);
        let e = f.offset("sport", 4).unwrap_err().to_string();
        assert!(e.contains("2 bytes"), "{e}");
        assert!(f.offset("err", 4).is_err());
        assert!(Format::parse("x:y", "name: y\nformat:\n").is_err());
    }
}
