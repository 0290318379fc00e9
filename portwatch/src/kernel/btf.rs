//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Only what portwatch needs: struct member offsets (through anonymous
//! unions and nested structs, by dotted path) and functions with their
//! parameter count. The programs get no CO-RE relocations from rustc, so
//! these offsets are how a field read stays right on every kernel.

use std::collections::HashMap;

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

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
    bitfield: bool,
}

/// One type, 16 bytes: vmlinux has some 150,000 of them, and this copy is
/// most of what start-up holds at its peak.
#[derive(Debug, Clone, Copy)]
enum Type {
    /// A struct or union: its members are `Btf::members[first..first + count]`.
    Struct {
        name: u32,
        first: u32,
        count: u32,
    },
    /// typedef / const / volatile / restrict / type tag: points at another type.
    Alias(u32),
    Func {
        name: u32,
        proto: u32,
    },
    FuncProto {
        params: u32,
    },
    Other,
}

/// Parsed kernel BTF: enough to find offsets and functions.
pub struct Btf {
    types: Vec<Type>, // index = type id; 0 is void
    /// Every struct's and union's members, in type order.
    members: Vec<Member>,
    strings: Vec<u8>,
    /// Named structs and functions, by name: the first of each name.
    structs: NameIndex,
    funcs: NameIndex,
}

/// Type ids by name, keyed by a hash of the name (no copy of the names:
/// the strings are the BTF's own); the rare clash of two names on one hash
/// goes to a short list.
#[derive(Default, Clone)]
struct NameIndex {
    by_hash: HashMap<u64, u32>,
    clashes: Vec<u32>,
}

/// FNV-1a, 64 bits.
fn name_hash(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
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

impl Btf {
    pub fn from_sys_fs() -> Result<Btf> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("cannot read {path}: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
        })?;
        Btf::parse(&data).with_context(|| format!("cannot parse {path}"))
    }

    /// A kernel module's BTF (`/sys/kernel/btf/<module>`), which is split
    /// BTF on top of vmlinux's: its type ids continue vmlinux's and its
    /// string offsets continue vmlinux's string section.
    pub fn module_from_sys_fs(&self, module: &str) -> Result<Btf> {
        let path = format!("/sys/kernel/btf/{module}");
        let data = std::fs::read(&path)
            .with_context(|| format!("cannot read {path}: module {module} not loaded"))?;
        Btf::parse_on(&data, Some(self)).with_context(|| format!("cannot parse {path}"))
    }

    pub fn parse(b: &[u8]) -> Result<Btf> {
        Btf::parse_on(b, None)
    }

    /// `base`: the vmlinux BTF a module's split BTF continues.
    pub(crate) fn parse_on(b: &[u8], base: Option<&Btf>) -> Result<Btf> {
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
        let tbase = hdr_len + type_off;
        let sbase = hdr_len + str_off;
        let tsec = b
            .get(tbase..tbase + type_len)
            .context("BTF type section out of bounds")?;
        let own_strings = b
            .get(sbase..sbase + str_len)
            .context("BTF string section out of bounds")?;
        // One pass to size the tables exactly (no doubling as they grow).
        let (mut ntypes, mut nmembers, mut p) = (0usize, 0usize, 0usize);
        while p < tsec.len() {
            let info = u32_at(tsec, p + 4)?;
            let kind = (info >> 24) & 0x1f;
            let Ok((len, members)) = body_len(kind, (info & 0xffff) as usize) else {
                bail!("unknown BTF kind {kind} at type {}", ntypes + 1);
            };
            p += 12 + len;
            if p > tsec.len() {
                bail!("BTF truncated");
            }
            ntypes += 1;
            nmembers += members;
        }
        // Split BTF: one id space and one string space with the base.
        let mut btf = match base {
            Some(base) => Btf {
                types: base.types.clone(),
                members: base.members.clone(),
                strings: base.strings.clone(),
                structs: base.structs.clone(),
                funcs: base.funcs.clone(),
            },
            None => Btf {
                types: vec![Type::Other],
                members: vec![],
                strings: vec![],
                structs: NameIndex::default(),
                funcs: NameIndex::default(),
            },
        };
        let first_own = btf.types.len();
        btf.types.reserve_exact(ntypes);
        btf.members.reserve_exact(nmembers);
        btf.strings.reserve_exact(own_strings.len());
        btf.strings.extend_from_slice(own_strings);

        let mut p = 0usize;
        while p < tsec.len() {
            let name = u32_at(tsec, p)?;
            let info = u32_at(tsec, p + 4)?;
            let size_or_type = u32_at(tsec, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let (len, _) = body_len(kind, vlen)?;
            let t = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let first = btf.members.len() as u32;
                    for i in 0..vlen {
                        let m = p + 12 * i;
                        let off = u32_at(tsec, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (off & 0xff_ffff, off >> 24 != 0)
                        } else {
                            (off, false)
                        };
                        btf.members.push(Member {
                            name: u32_at(tsec, m)?,
                            ty: u32_at(tsec, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    Type::Struct {
                        name,
                        first,
                        count: vlen as u32,
                    }
                }
                KIND_FUNC_PROTO => Type::FuncProto {
                    params: vlen as u32,
                },
                KIND_FUNC => Type::Func {
                    name,
                    proto: size_or_type,
                },
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                _ => Type::Other,
            };
            p += len;
            btf.types.push(t);
        }
        for id in first_own..btf.types.len() {
            match btf.types[id] {
                Type::Struct { name, count, .. } if name != 0 && count > 0 => {
                    btf.index(false, name, id as u32)
                }
                Type::Func { name, .. } => btf.index(true, name, id as u32),
                _ => {}
            }
        }
        Ok(btf)
    }

    /// The name of a struct or function type.
    fn name_of(&self, id: u32) -> Option<&str> {
        match self.types.get(id as usize)? {
            Type::Struct { name, .. } | Type::Func { name, .. } => Some(self.str_at(*name)),
            _ => None,
        }
    }

    /// Adds type `id`, named at string offset `name`, to the struct or the
    /// function index, unless a type of that name is there already.
    fn index(&mut self, func: bool, name: u32, id: u32) {
        let n = self.str_at(name);
        let h = name_hash(n.as_bytes());
        let ix = if func { &self.funcs } else { &self.structs };
        let clash = match ix.by_hash.get(&h) {
            None => false,
            Some(&other) if self.name_of(other) == Some(n) => return,
            Some(_) => true,
        };
        if clash && ix.clashes.iter().any(|&c| self.name_of(c) == Some(n)) {
            return;
        }
        let ix = if func {
            &mut self.funcs
        } else {
            &mut self.structs
        };
        if clash {
            ix.clashes.push(id);
        } else {
            ix.by_hash.insert(h, id);
        }
    }

    /// The id of the struct (or function) named `name`.
    fn lookup(&self, func: bool, name: &str) -> Option<u32> {
        let ix = if func { &self.funcs } else { &self.structs };
        let named = |id: &u32| self.name_of(*id) == Some(name);
        ix.by_hash
            .get(&name_hash(name.as_bytes()))
            .filter(|&&id| named(&id))
            .or_else(|| ix.clashes.iter().find(|&&id| named(&id)))
            .copied()
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// Finds `name` in the members of type `id`, looking into anonymous
    /// struct/union members. Returns (bit offset, member type, bitfield).
    fn find_member(&self, id: u32, name: &str) -> Option<(u64, u32, bool)> {
        self.find_member_in(id, name, 0, &mut 0)
    }

    /// `find_member`, `depth` anonymous members down, `looks` members
    /// looked at so far. The kernel nests anonymous members a few deep;
    /// past `MAX_NESTING` levels or `MAX_LOOKS` members the blob is
    /// malformed (a member of its own type, a cycle): not found.
    fn find_member_in(
        &self,
        id: u32,
        name: &str,
        depth: u32,
        looks: &mut usize,
    ) -> Option<(u64, u32, bool)> {
        if depth > MAX_NESTING || *looks > MAX_LOOKS {
            return None;
        }
        let Type::Struct { first, count, .. } = *self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        let members = self
            .members
            .get(first as usize..first as usize + count as usize)?;
        *looks += members.len();
        for m in members {
            if m.name != 0 && self.str_at(m.name) == name {
                return Some((m.bit_offset as u64, m.ty, m.bitfield));
            }
        }
        for m in members {
            if m.name == 0 {
                if let Some((off, ty, bf)) = self.find_member_in(m.ty, name, depth + 1, looks) {
                    return Some((m.bit_offset as u64 + off, ty, bf));
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
        let Type::Func { proto, .. } = &self.types[id as usize] else {
            return None;
        };
        match self.types.get(*proto as usize)? {
            Type::FuncProto { params } => Some(*params),
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
