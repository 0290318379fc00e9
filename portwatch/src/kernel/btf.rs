//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Only what portwatch needs: struct member offsets (through anonymous
//! unions and nested structs, by dotted path) and functions with their
//! parameter count. The programs get no CO-RE relocations from rustc, so
//! these offsets are how a field read stays right on every kernel.

use anyhow::{bail, Context as _, Result};

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// How deep `find_member` follows anonymous members, and how many members
/// it looks at for one name.
const MAX_NESTING: u32 = 32;
const MAX_LOOKS: usize = 1 << 20;

/// One BTF blob as the kernel gives it (vmlinux's, or a module's split BTF
/// on top of it), kept as read: types and members are read from its bytes
/// when asked for. What parsing builds is small: where each type starts, and
/// the named structs and functions with their name offsets. vmlinux has some
/// 150,000 types and 600,000 members; copying them into tables (and
/// hashing every name) was most of portwatch's start-up and of its peak
/// memory, for the twenty-odd look-ups it makes.
struct Blob {
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Where each type starts in the type section, by `id - first_id`.
    at: Vec<u32>,
    first_id: u32,
    /// Where this blob's strings start in the combined string space.
    str_base: u32,
    /// (name offset, id) of every named struct/union with members, and of
    /// every function, in id order (sorting them cost more than the few
    /// look-ups that scan them).
    structs: Vec<(u32, u32)>,
    funcs: Vec<(u32, u32)>,
}

/// A type's 12-byte header.
#[derive(Clone, Copy)]
struct Head {
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
}

impl Blob {
    fn tsec(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    /// The header of own type `id`, and where its body starts in the type
    /// section.
    fn head(&self, id: u32) -> Option<(Head, usize)> {
        let i = id.checked_sub(self.first_id)? as usize;
        let p = *self.at.get(i)? as usize;
        let t = self.tsec();
        let info = u32_at(t, p + 4).ok()?;
        Some((
            Head {
                kind: (info >> 24) & 0x1f,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(t, p + 8).ok()?,
            },
            p + 12,
        ))
    }
}

/// A look-up made: (is a function, name, id found).
type LookedUp = (bool, Box<str>, Option<u32>);

/// Parsed kernel BTF: enough to find offsets and functions.
pub struct Btf {
    /// vmlinux's, under a module's.
    base: Option<std::sync::Arc<Blob>>,
    own: std::sync::Arc<Blob>,
    /// Look-ups made so far (is-function, name, id): the offsets ask for
    /// the same dozen structs some thirty times.
    looked_up: std::sync::Mutex<Vec<LookedUp>>,
}

/// The bytes a type takes after its 12-byte header, and how many members
/// it has (structs and unions), from its kind and `vlen`.
fn body_len(kind: u32, vlen: usize) -> Result<(usize, usize)> {
    Ok(match kind {
        KIND_STRUCT | KIND_UNION => (12 * vlen, vlen),
        KIND_INT | KIND_VAR | KIND_DECL_TAG => (4, 0),
        KIND_ARRAY => (12, 0),
        KIND_ENUM | KIND_FUNC_PROTO => (8 * vlen, 0),
        KIND_ENUM64 | KIND_DATASEC => (12 * vlen, 0),
        KIND_FUNC | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
        | KIND_PTR | KIND_FWD | KIND_FLOAT => (0, 0),
        k => bail!("unknown BTF kind {k}"),
    })
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Whether `tail` (a string section from some offset on) starts with the
/// string `name`, its NUL included: the whole name, not a prefix of a longer
/// one.
fn starts_string(tail: &[u8], name: &[u8]) -> bool {
    tail.len() > name.len() && tail[name.len()] == 0 && &tail[..name.len()] == name
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("cannot read {path}: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
        })?;
        Btf::parse_owned(data, None).with_context(|| format!("cannot parse {path}"))
    }

    /// A kernel module's BTF (`/sys/kernel/btf/<module>`), which is split
    /// BTF on top of vmlinux's: its type ids continue vmlinux's and its
    /// string offsets continue vmlinux's string section.
    pub fn module_from_sys_fs(&self, module: &str) -> Result<Btf> {
        let path = format!("/sys/kernel/btf/{module}");
        let data = std::fs::read(&path)
            .with_context(|| format!("cannot read {path}: module {module} not loaded"))?;
        Btf::parse_owned(data, Some(self)).with_context(|| format!("cannot parse {path}"))
    }

    #[cfg(test)]
    pub fn parse(b: &[u8]) -> Result<Btf> {
        Btf::parse_on(b, None)
    }

    /// `base`: the vmlinux BTF a module's split BTF continues.
    #[cfg(test)]
    pub(crate) fn parse_on(b: &[u8], base: Option<&Btf>) -> Result<Btf> {
        Btf::parse_owned(b.to_vec(), base)
    }

    fn parse_owned(data: Vec<u8>, base: Option<&Btf>) -> Result<Btf> {
        let b = &data[..];
        if b.len() < 24 {
            bail!("too short for a BTF header");
        }
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != 0xeb9f {
            bail!("bad BTF magic {magic:#x} (big-endian BTF is not supported)");
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let tbase = hdr_len.saturating_add(type_off);
        let sbase = hdr_len.saturating_add(str_off);
        let types = tbase..tbase.saturating_add(type_len);
        let strings = sbase..sbase.saturating_add(str_len);
        let tsec = b
            .get(types.clone())
            .context("BTF type section out of bounds")?;
        b.get(strings.clone())
            .context("BTF string section out of bounds")?;
        // Split BTF: one id space and one string space with the base (a
        // module's BTF sits on vmlinux's, never on another module's).
        let (base, first_id, str_base) = match base {
            Some(base) if base.base.is_some() => bail!("split BTF on split BTF"),
            Some(base) => {
                let o = &base.own;
                let next = o.first_id as usize + o.at.len();
                (
                    Some(base.own.clone()),
                    u32::try_from(next).context("too many BTF types")?,
                    o.str_base + o.strings.len() as u32,
                )
            }
            None => (None, 1, 0),
        };
        let (mut at, mut structs, mut funcs) = (vec![], vec![], vec![]);
        let mut p = 0usize;
        while p < tsec.len() {
            let id = first_id as usize + at.len();
            let name = u32_at(tsec, p)?;
            let info = u32_at(tsec, p + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let Ok((len, _)) = body_len(kind, vlen) else {
                bail!("unknown BTF kind {kind} at type {id}");
            };
            at.push(p as u32);
            let id = u32::try_from(id).context("too many BTF types")?;
            match kind {
                KIND_STRUCT | KIND_UNION if name != 0 && vlen > 0 => structs.push((name, id)),
                KIND_FUNC => funcs.push((name, id)),
                _ => {}
            }
            p += 12 + len;
            if p > tsec.len() {
                bail!("BTF truncated");
            }
        }
        Ok(Btf {
            base,
            own: std::sync::Arc::new(Blob {
                data,
                types,
                strings,
                at,
                first_id,
                str_base,
                structs,
                funcs,
            }),
            looked_up: Default::default(),
        })
    }

    /// The blobs, base first.
    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.base.iter().map(|b| &**b).chain([&*self.own])
    }

    fn head(&self, id: u32) -> Option<(&Blob, Head, usize)> {
        self.blobs()
            .find(|b| id >= b.first_id && ((id - b.first_id) as usize) < b.at.len())
            .and_then(|b| b.head(id).map(|(h, p)| (b, h, p)))
    }

    fn str_at(&self, off: u32) -> &[u8] {
        let s = self.tail_at(off);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        &s[..end]
    }

    /// The string section from `off` to its end (`off` counts across the
    /// base BTF's strings and a split BTF's own).
    fn tail_at(&self, off: u32) -> &[u8] {
        let Some(b) = self.blobs().filter(|b| off >= b.str_base).last() else {
            return &[];
        };
        b.data[b.strings.clone()]
            .get((off - b.str_base) as usize..)
            .unwrap_or(&[])
    }

    /// The id of the struct (or function) named `name`: the first of that
    /// name, remembered for the next look-up of it.
    fn lookup(&self, func: bool, name: &str) -> Option<u32> {
        if name.is_empty() {
            return None;
        }
        let mut memo = self
            .looked_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, id)) = memo.iter().find(|(f, n, _)| *f == func && &**n == name) {
            return *id;
        }
        let id = if func {
            self.lookup_func(name)
        } else {
            self.lookup_struct(name)
        };
        memo.push((func, name.into(), id));
        id
    }

    /// Whether the string at `off` is `name`.
    fn is_named(&self, off: u32, name: &[u8]) -> bool {
        starts_string(self.tail_at(off), name)
    }

    /// A struct by name: the named structs (some ten thousand) compared
    /// one by one, most of them rejected at the first byte. Far less work
    /// than a search of the 2.5 MB string section, which under emulation
    /// was a million instructions a look-up.
    fn lookup_struct(&self, name: &str) -> Option<u32> {
        self.blobs()
            .flat_map(|b| b.structs.iter())
            .filter(|&&(n, _)| self.is_named(n, name.as_bytes()))
            .map(|&(_, id)| id)
            .min()
    }

    /// A function by name (there are some sixty thousand): compared one by
    /// one as the structs are, most rejected at the first byte. Half the
    /// work of searching the 2.5 MB string section for `name\0` first
    /// (0.6 against 1.2 ms for trace's five functions on this machine).
    fn lookup_func(&self, name: &str) -> Option<u32> {
        self.find_funcs(&[name])[0]
    }

    /// Several functions in one pass over the functions: the id of each
    /// (the first of its name), in the order of `names`.
    fn find_funcs(&self, names: &[&str]) -> Vec<Option<u32>> {
        let mut ids = vec![None::<u32>; names.len()];
        for &(off, id) in self.blobs().flat_map(|b| b.funcs.iter()) {
            let s = self.tail_at(off);
            // Most names differ at the first byte: tested before the rest.
            let Some(&first) = s.first() else { continue };
            for (want, got) in names.iter().zip(ids.iter_mut()) {
                let w = want.as_bytes();
                if w.first() == Some(&first) && starts_string(s, w) {
                    *got = Some(got.map_or(id, |g| g.min(id)));
                }
            }
        }
        ids
    }

    /// Looks up the functions `names` in one pass and remembers them, so
    /// that `func_id` and `func_params` of each answer at once: one pass
    /// instead of one per function (under emulation, 7 of the start-up's
    /// 146 ms went to trace's five look-ups).
    pub fn remember_funcs(&self, names: &[&str]) {
        let mut memo = self
            .looked_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let todo: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !n.is_empty() && !memo.iter().any(|(f, m, _)| *f && &**m == *n))
            .collect();
        for (n, id) in todo.iter().zip(self.find_funcs(&todo)) {
            memo.push((true, (*n).into(), id));
        }
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.head(id) {
                Some((
                    _,
                    Head {
                        kind:
                            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG,
                        size_or_type,
                        ..
                    },
                    _,
                )) => id = size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Finds `name` in the members of type `id`, looking into anonymous
    /// struct/union members. Returns (bit offset, member type, bitfield).
    fn find_member(&self, id: u32, name: &str) -> Option<(u64, u32, bool)> {
        self.find_member_in(id, name.as_bytes(), 0, &mut 0)
    }

    /// `find_member`, `depth` anonymous members down, `looks` members
    /// looked at so far. The kernel nests anonymous members a few deep;
    /// past `MAX_NESTING` levels or `MAX_LOOKS` members the blob is
    /// malformed (a member of its own type, a cycle): not found.
    fn find_member_in(
        &self,
        id: u32,
        name: &[u8],
        depth: u32,
        looks: &mut usize,
    ) -> Option<(u64, u32, bool)> {
        if depth > MAX_NESTING || *looks > MAX_LOOKS {
            return None;
        }
        let (blob, h, body) = self.head(self.resolve(id))?;
        if h.kind != KIND_STRUCT && h.kind != KIND_UNION {
            return None;
        }
        let t = blob.tsec();
        // (name, type, bit offset, bitfield) of member i.
        let member = |i: usize| -> Option<(u32, u32, u64, bool)> {
            let m = body + 12 * i;
            let off = u32_at(t, m + 8).ok()?;
            let (bit_offset, bitfield) = if h.kind_flag {
                (off & 0xff_ffff, off >> 24 != 0)
            } else {
                (off, false)
            };
            Some((
                u32_at(t, m).ok()?,
                u32_at(t, m + 4).ok()?,
                bit_offset as u64,
                bitfield,
            ))
        };
        *looks += h.vlen;
        for i in 0..h.vlen {
            let (n, ty, off, bf) = member(i)?;
            if n != 0 && self.str_at(n) == name {
                return Some((off, ty, bf));
            }
        }
        for i in 0..h.vlen {
            let (n, ty, off, _) = member(i)?;
            if n == 0 {
                if let Some((o, ty, bf)) = self.find_member_in(ty, name, depth + 1, looks) {
                    return Some((off + o, ty, bf));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (dotted, e.g. `"__sk_common.skc_num"`) inside
    /// `struct name`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32> {
        let mut id = self
            .lookup(false, strukt)
            .with_context(|| format!("struct {strukt} not in the kernel's BTF"))?;
        let mut bits = 0u64;
        for part in path.split('.') {
            let (off, ty, bitfield) = self
                .find_member(id, part)
                .with_context(|| format!("no member {part} in struct {strukt} (path {path})"))?;
            if bitfield {
                bail!("{strukt}.{path} is a bitfield on this kernel");
            }
            bits += off;
            id = ty;
        }
        if !bits.is_multiple_of(8) {
            bail!("{strukt}.{path} is not byte aligned");
        }
        u32::try_from(bits / 8).with_context(|| format!("{strukt}.{path}: offset out of range"))
    }

    /// The type id of kernel function `name` (what an fexit program's
    /// `attach_btf_id` names), if BTF knows it.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.lookup(true, name)
    }

    /// Number of parameters of kernel function `name`, if BTF knows it.
    pub fn func_params(&self, name: &str) -> Option<u32> {
        let id = self.lookup(true, name)?;
        let (_, f, _) = self.head(id)?;
        match self.head(f.size_or_type)? {
            (_, h, _) if h.kind == KIND_FUNC_PROTO => Some(h.vlen as u32),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob by hand: enough to test the parser without a kernel.
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
        /// Split BTF: where this blob's strings start in the combined space.
        str_base: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Builder {
                types: vec![],
                strings: vec![0],
                next_id: 1,
                str_base: 0,
            }
        }
        /// A module's BTF on top of `base` (ids and strings continue base's).
        pub fn on(base: &Builder) -> Self {
            Builder {
                types: vec![],
                strings: vec![0],
                next_id: base.next_id,
                str_base: base.str_base + base.strings.len() as u32,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn head(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            size_or_type: u32,
        ) -> u32 {
            let n = self.s(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            for v in [n, info, size_or_type] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }
        pub fn ptr(&mut self, to: u32) -> u32 {
            self.head("", KIND_PTR, 0, false, to)
        }
        pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, KIND_TYPEDEF, 0, false, to)
        }
        /// members: (name, type, bit offset, bitfield size)
        pub fn strukt(
            &mut self,
            name: &str,
            union: bool,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let id = self.head(name, kind, members.len() as u32, kflag, size);
            for &(mname, ty, off, bf) in members {
                let n = self.s(mname);
                let off = if kflag { (bf << 24) | off } else { off };
                for v in [n, ty, off] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }
        pub fn func(&mut self, name: &str, params: &[u32]) -> u32 {
            let proto = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, 0);
            for &p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            self.head(name, KIND_FUNC, 0, false, proto)
        }
        pub fn build(&self) -> Vec<u8> {
            let mut out = vec![];
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    #[test]
    fn offsets_through_anonymous_members_and_paths() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("unsigned short", 2);
        let inner = b.strukt(
            "",
            false,
            8,
            &[("skc_daddr", u32t, 0, 0), ("skc_rcv_saddr", u32t, 32, 0)],
        );
        let un = b.strukt(
            "",
            true,
            8,
            &[("skc_addrpair", u32t, 0, 0), ("", inner, 0, 0)],
        );
        let common = b.strukt(
            "sock_common",
            false,
            16,
            &[("", un, 0, 0), ("skc_num", u16t, 96, 0)],
        );
        let td = b.typedef("sock_common_t", common);
        let _sock = b.strukt(
            "sock",
            false,
            64,
            &[
                ("pad", u32t, 0, 0),
                ("__sk_common", td, 64, 0),
                ("sk_protocol", u16t, 256, 0),
                ("bits", u32t, 260, 3),
            ],
        );
        let p = b.ptr(u32t);
        b.func("__inet_bind", &[p, p, u32t, u32t]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.offset_of("sock_common", "skc_rcv_saddr").unwrap(), 4);
        assert_eq!(
            btf.offset_of("sock", "__sk_common.skc_rcv_saddr").unwrap(),
            12
        );
        assert_eq!(btf.offset_of("sock", "__sk_common.skc_num").unwrap(), 20);
        assert_eq!(btf.offset_of("sock", "sk_protocol").unwrap(), 32);
        assert!(
            btf.offset_of("sock", "bits").is_err(),
            "bitfields are refused"
        );
        assert!(btf.offset_of("sock", "nope").is_err());
        assert!(btf.offset_of("nosuch", "x").is_err());
        assert_eq!(btf.func_params("__inet_bind"), Some(4));
        assert_eq!(btf.func_params("inet_bind_sk"), None);
    }

    #[test]
    fn module_btf_continues_the_base_ids_and_strings() {
        let mut base = Builder::new();
        let u32t = base.int("unsigned int", 4);
        let u16t = base.int("unsigned short", 2);
        let p = base.ptr(u32t);
        let mut m = Builder::on(&base);
        // Refers to base types by id; its own names live in its own strings.
        m.strukt(
            "ip_vs_conn_param",
            false,
            24,
            &[
                ("caddr", p, 64, 0),
                ("cport", u16t, 128, 0),
                ("vport", u16t, 144, 0),
            ],
        );
        m.func("ip_vs_conn_new", &[p, u32t, p, u16t, u32t, p, u32t]);
        let vmlinux = Btf::parse(&base.build()).unwrap();
        let module = Btf::parse_on(&m.build(), Some(&vmlinux)).unwrap();
        assert_eq!(module.offset_of("ip_vs_conn_param", "caddr").unwrap(), 8);
        assert_eq!(module.offset_of("ip_vs_conn_param", "vport").unwrap(), 18);
        assert_eq!(module.func_params("ip_vs_conn_new"), Some(7));
        assert!(vmlinux.func_params("ip_vs_conn_new").is_none());
    }

    /// An anonymous member of its own struct's type (a cycle) sent the
    /// look-up down until the stack overflowed; member offsets summed past
    /// u32 overflowed.
    #[test]
    fn lookups_survive_cycles_and_huge_offsets() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        // Ids are handed out in order: "loop" is 2, "a" 3 and "b" 4.
        b.strukt("loop", false, 8, &[("", 2, 0, 0), ("x", u32t, 32, 0)]);
        b.strukt("a", false, 8, &[("", 4, 0, 0)]);
        b.strukt("b", false, 8, &[("", 3, 0, 0), ("y", u32t, 0, 0)]);
        let inner = b.strukt("", false, 8, &[("far", u32t, 0xffff_fff8, 0)]);
        b.strukt("big", false, 8, &[("", inner, 0xffff_fff8, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.offset_of("loop", "x").unwrap(), 4);
        assert!(btf.offset_of("loop", "nope").is_err());
        assert!(btf.offset_of("a", "nope").is_err());
        assert_eq!(btf.offset_of("a", "y").unwrap(), 0);
        assert_eq!(btf.offset_of("big", "far").unwrap(), 0x3fff_fffe);
    }

    /// Names are found whole (`sock` is not the tail of `sk_sock` nor the
    /// head of `sock_common`), the first type of a name wins, a forward
    /// declaration or an empty struct of that name is never it, and a
    /// function is not a struct of the same name.
    #[test]
    fn lookups_find_whole_names_and_the_first_of_each() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        b.strukt("sk_sock", false, 4, &[("a", u32t, 0, 0)]);
        b.strukt("sock", false, 0, &[]);
        b.strukt("sock_common", false, 4, &[("b", u32t, 0, 0)]);
        b.strukt("sock", false, 8, &[("c", u32t, 32, 0)]);
        b.strukt("sock", false, 8, &[("d", u32t, 0, 0)]);
        b.func("sock", &[u32t]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.offset_of("sock", "c").unwrap(), 4);
        assert!(btf.offset_of("sock", "d").is_err(), "the first sock wins");
        assert!(btf.offset_of("sock", "a").is_err());
        assert_eq!(btf.offset_of("sock_common", "b").unwrap(), 0);
        assert!(btf.offset_of("sk", "a").is_err());
        assert_eq!(btf.func_params("sock"), Some(1));
        assert_eq!(btf.func_params("sock_common"), None);
        assert_eq!(btf.func_params(""), None);
    }

    /// Functions found in one pass answer as one look-up each would: the
    /// first of each name, whole names only, None for a missing one.
    #[test]
    fn functions_found_together_answer_as_alone() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        b.func("inet_bind", &[u32t]);
        b.func("__inet_bind", &[u32t, u32t, u32t, u32t]);
        b.func("inet6_bind", &[u32t, u32t, u32t]);
        b.func("__inet_bind", &[u32t]);
        b.func("inet_bind_skx", &[u32t]);
        let bytes = b.build();
        let alone = Btf::parse(&bytes).unwrap();
        let names = ["__inet_bind", "inet_bind_sk", "inet6_bind", "inet_bind"];
        let want: Vec<_> = names.iter().map(|n| alone.func_id(n)).collect();
        assert_eq!(alone.find_funcs(&names), want);
        assert!(want[0].is_some() && want[1].is_none() && want[0] < want[2]);
        let together = Btf::parse(&bytes).unwrap();
        together.remember_funcs(&names);
        assert_eq!(together.looked_up.lock().unwrap().len(), 4);
        for n in names {
            assert_eq!(together.func_params(n), alone.func_params(n), "{n}");
        }
        assert_eq!(together.func_params("__inet_bind"), Some(4));
        assert_eq!(
            together.looked_up.lock().unwrap().len(),
            4,
            "answered from memory"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
        let mut blob = Builder::new().build();
        blob[12] = 0xff; // type_len past the end
        assert!(Btf::parse(&blob).is_err());
        // A struct claiming 65535 members in a blob that holds none.
        let mut b = Builder::new();
        b.strukt("s", false, 8, &[]);
        let mut blob = b.build();
        blob[24 + 4..24 + 6].copy_from_slice(&[0xff, 0xff]);
        assert!(Btf::parse(&blob).is_err());
    }
}
