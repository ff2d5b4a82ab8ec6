//! Frame bodies: a typed key-value list in the spirit of the seeds' "user data", read lazily.
//!
//! ```text
//! body  := item*
//! item  := key_len:u8  key:[u8; key_len] (UTF-8)  type:u8  value
//! value := type 0x01 int   -> i64, 8 bytes big-endian
//!        | type 0x02 str   -> len:u32 BE, UTF-8 bytes
//!        | type 0x03 bin   -> len:u32 BE, bytes
//!        | type 0x04 list  -> len:u32 BE, a nested body (same grammar)
//!        | type >= 0x05    -> len:u32 BE, bytes (unknown: skipped by readers, kept by proxies)
//! ```
//!
//! [`BodyRef`] borrows the frame's bytes and decodes nothing until asked: iterating yields
//! borrowed `&str` / `&[u8]` views, so reading a body never copies or allocates. [`BodyWriter`]
//! appends items straight into the frame's `BytesMut`.

use bytes::{BufMut, BytesMut};
use nom::Parser;
use nom::number::complete::{be_i64, be_u8, be_u32};

use crate::error::BodyError;

/// Lists may nest at most this deep (PROTOCOL.md §3); deeper bodies fail validation.
pub const MAX_DEPTH: usize = 16;

/// Value type bytes.
pub mod ty {
    /// Signed 64-bit integer.
    pub const INT: u8 = 0x01;
    /// UTF-8 string.
    pub const STR: u8 = 0x02;
    /// Opaque bytes.
    pub const BIN: u8 = 0x03;
    /// Nested key-value list.
    pub const LIST: u8 = 0x04;
}

/// One borrowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A string (validated UTF-8).
    Str(&'a str),
    /// Opaque bytes.
    Bin(&'a [u8]),
    /// A nested list, itself read lazily.
    List(BodyRef<'a>),
    /// A value of a type this version does not know: its type byte and raw bytes.
    Unknown(u8, &'a [u8]),
}

/// A borrowed, lazily read body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyRef<'a> {
    buf: &'a [u8],
}

impl<'a> BodyRef<'a> {
    /// View `buf` as a body. Nothing is checked until it is read.
    pub fn new(buf: &'a [u8]) -> BodyRef<'a> {
        BodyRef { buf }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether the body holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Iterate over `(key, value)` items. Iteration stops after the first error.
    pub fn iter(&self) -> Items<'a> {
        Items {
            buf: self.buf,
            offset: 0,
            failed: false,
        }
    }

    /// Walk the whole body, nested lists included, and report the first error.
    ///
    /// # Errors
    /// The first [`BodyError`] met, or [`BodyError::TooDeep`] past [`MAX_DEPTH`].
    pub fn validate(&self) -> Result<(), BodyError> {
        // The body itself is depth 0: a list item in it is at depth 1, so 16 nested lists pass.
        self.validate_depth(0)
    }

    /// `depth` is how many lists enclose this body.
    fn validate_depth(&self, depth: usize) -> Result<(), BodyError> {
        // PROTOCOL.md §3: "Lists nest at most 16 deep; a deeper body is malformed."
        if depth > MAX_DEPTH {
            return Err(BodyError::TooDeep(MAX_DEPTH));
        }
        for item in self.iter() {
            if let (_, Value::List(inner)) = item? {
                inner.validate_depth(depth + 1)?;
            }
        }
        Ok(())
    }

    /// The first value under `key`.
    ///
    /// # Errors
    /// A [`BodyError`] if the body is malformed before `key` is found.
    pub fn get(&self, key: &str) -> Result<Option<Value<'a>>, BodyError> {
        for item in self.iter() {
            let (k, v) = item?;
            if k == key {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The integer under `key`, if present.
    ///
    /// # Errors
    /// Malformed body, or [`BodyError::WrongType`].
    pub fn opt_int(&self, key: &'static str) -> Result<Option<i64>, BodyError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Int(v)) => Ok(Some(v)),
            Some(_) => Err(BodyError::WrongType(key)),
        }
    }

    /// The string under `key`, if present.
    ///
    /// # Errors
    /// Malformed body, or [`BodyError::WrongType`].
    pub fn opt_str(&self, key: &'static str) -> Result<Option<&'a str>, BodyError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Str(v)) => Ok(Some(v)),
            Some(_) => Err(BodyError::WrongType(key)),
        }
    }

    /// The bytes under `key`, if present (a string value is accepted as its bytes).
    ///
    /// # Errors
    /// Malformed body, or [`BodyError::WrongType`].
    pub fn opt_bin(&self, key: &'static str) -> Result<Option<&'a [u8]>, BodyError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Bin(v)) => Ok(Some(v)),
            Some(Value::Str(v)) => Ok(Some(v.as_bytes())),
            Some(_) => Err(BodyError::WrongType(key)),
        }
    }

    /// The list under `key`, if present.
    ///
    /// # Errors
    /// Malformed body, or [`BodyError::WrongType`].
    pub fn opt_list(&self, key: &'static str) -> Result<Option<BodyRef<'a>>, BodyError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::List(v)) => Ok(Some(v)),
            Some(_) => Err(BodyError::WrongType(key)),
        }
    }

    /// The integer under `key`.
    ///
    /// # Errors
    /// Malformed body, [`BodyError::Missing`] or [`BodyError::WrongType`].
    pub fn int(&self, key: &'static str) -> Result<i64, BodyError> {
        self.opt_int(key)?.ok_or(BodyError::Missing(key))
    }

    /// The string under `key`.
    ///
    /// # Errors
    /// Malformed body, [`BodyError::Missing`] or [`BodyError::WrongType`].
    pub fn str(&self, key: &'static str) -> Result<&'a str, BodyError> {
        self.opt_str(key)?.ok_or(BodyError::Missing(key))
    }

    /// The bytes under `key`.
    ///
    /// # Errors
    /// Malformed body, [`BodyError::Missing`] or [`BodyError::WrongType`].
    pub fn bin(&self, key: &'static str) -> Result<&'a [u8], BodyError> {
        self.opt_bin(key)?.ok_or(BodyError::Missing(key))
    }

    /// The list under `key`.
    ///
    /// # Errors
    /// Malformed body, [`BodyError::Missing`] or [`BodyError::WrongType`].
    pub fn list(&self, key: &'static str) -> Result<BodyRef<'a>, BodyError> {
        self.opt_list(key)?.ok_or(BodyError::Missing(key))
    }
}

/// Iterator over a body's items; see [`BodyRef::iter`].
#[derive(Debug, Clone)]
pub struct Items<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

type NomErr<'a> = nom::Err<nom::error::Error<&'a [u8]>>;

/// An item's key and type byte.
type ItemHead<'a> = (&'a [u8], u8);

fn item_head(i: &[u8]) -> Result<(&[u8], ItemHead<'_>), NomErr<'_>> {
    let (i, klen) = be_u8(i)?;
    let (i, key) = nom::bytes::complete::take(klen).parse(i)?;
    let (i, t) = be_u8(i)?;
    Ok((i, (key, t)))
}

fn len_prefixed(i: &[u8]) -> Result<(&[u8], &[u8]), NomErr<'_>> {
    nom::multi::length_data(be_u32).parse(i)
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<(&'a str, Value<'a>), BodyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.buf.len() {
            return None;
        }
        let start = self.offset;
        let input = &self.buf[start..];
        let res = (|| {
            let (rest, (key, t)) = item_head(input).map_err(|_| BodyError::Truncated(start))?;
            let key = std::str::from_utf8(key).map_err(|_| BodyError::Utf8(start))?;
            let (rest, value) = if t == ty::INT {
                let (rest, v) = be_i64::<_, nom::error::Error<&[u8]>>(rest)
                    .map_err(|_| BodyError::Truncated(start))?;
                (rest, Value::Int(v))
            } else {
                let (rest, data) = len_prefixed(rest).map_err(|_| BodyError::Truncated(start))?;
                let v = match t {
                    ty::STR => {
                        Value::Str(std::str::from_utf8(data).map_err(|_| BodyError::Utf8(start))?)
                    }
                    ty::BIN => Value::Bin(data),
                    ty::LIST => Value::List(BodyRef::new(data)),
                    other => Value::Unknown(other, data),
                };
                (rest, v)
            };
            Ok((rest.len(), key, value))
        })();
        match res {
            Ok((rest_len, key, value)) => {
                self.offset = self.buf.len() - rest_len;
                Some(Ok((key, value)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends items to a body under construction, straight into the destination buffer.
///
/// Keys are at most 255 bytes (the key length is one byte). Debug builds assert it; release
/// builds cut a longer key to at most 255 bytes, on a char boundary. All keys in PROTOCOL.md
/// are short.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    dst: &'a mut BytesMut,
}

impl<'a> BodyWriter<'a> {
    /// Append items to `dst`.
    pub fn new(dst: &'a mut BytesMut) -> BodyWriter<'a> {
        BodyWriter { dst }
    }

    fn key(&mut self, key: &str, t: u8) {
        debug_assert!(key.len() <= 255, "body keys are at most 255 bytes");
        // Cut on a char boundary: a key cut mid-character would not be UTF-8, and readers
        // would then reject the whole body.
        let mut cut = key.len().min(255);
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        let k = &key.as_bytes()[..cut];
        // Cast is exact: the slice is at most 255 long.
        self.dst.put_u8(k.len() as u8);
        self.dst.put_slice(k);
        self.dst.put_u8(t);
    }

    fn len32(&mut self, len: usize) -> Result<(), BodyError> {
        let l = u32::try_from(len).map_err(|_| BodyError::TooLong)?;
        self.dst.put_u32(l);
        Ok(())
    }

    /// Append an integer.
    pub fn int(&mut self, key: &str, v: i64) -> &mut Self {
        self.key(key, ty::INT);
        self.dst.put_i64(v);
        self
    }

    /// Append a string.
    ///
    /// # Errors
    /// [`BodyError::TooLong`] past `u32::MAX` bytes.
    pub fn str(&mut self, key: &str, v: &str) -> Result<&mut Self, BodyError> {
        self.bin_typed(key, ty::STR, v.as_bytes())
    }

    /// Append bytes.
    ///
    /// # Errors
    /// [`BodyError::TooLong`] past `u32::MAX` bytes.
    pub fn bin(&mut self, key: &str, v: &[u8]) -> Result<&mut Self, BodyError> {
        self.bin_typed(key, ty::BIN, v)
    }

    fn bin_typed(&mut self, key: &str, t: u8, v: &[u8]) -> Result<&mut Self, BodyError> {
        if u32::try_from(v.len()).is_err() {
            return Err(BodyError::TooLong);
        }
        self.key(key, t);
        self.len32(v.len())?;
        self.dst.put_slice(v);
        Ok(self)
    }

    /// Append a nested list filled by `f`; its length is patched in afterwards.
    ///
    /// # Errors
    /// Whatever `f` returns, or [`BodyError::TooLong`].
    pub fn list(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), BodyError>,
    ) -> Result<&mut Self, BodyError> {
        self.key(key, ty::LIST);
        let at = self.dst.len();
        self.dst.put_u32(0);
        f(&mut BodyWriter { dst: self.dst })?;
        let len = self.dst.len() - at - 4;
        let l = u32::try_from(len).map_err(|_| BodyError::TooLong)?;
        self.dst[at..at + 4].copy_from_slice(&l.to_be_bytes());
        Ok(self)
    }

    /// Append an already-encoded item list (e.g. a list copied from another body) as a list.
    ///
    /// # Errors
    /// [`BodyError::TooLong`].
    pub fn raw_list(&mut self, key: &str, items: &[u8]) -> Result<&mut Self, BodyError> {
        self.bin_typed(key, ty::LIST, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let mut b = BytesMut::new();
        let mut w = BodyWriter::new(&mut b);
        w.int("n", -5);
        w.str("s", "héllo").unwrap();
        w.bin("b", &[0, 1, 2]).unwrap();
        w.list("l", |w| {
            w.int("x", 1);
            Ok(())
        })
        .unwrap();
        let body = BodyRef::new(&b);
        body.validate().unwrap();
        assert_eq!(body.int("n").unwrap(), -5);
        assert_eq!(body.str("s").unwrap(), "héllo");
        assert_eq!(body.bin("b").unwrap(), &[0, 1, 2]);
        assert_eq!(body.list("l").unwrap().int("x").unwrap(), 1);
        assert_eq!(body.opt_int("absent").unwrap(), None);
        assert_eq!(body.int("s"), Err(BodyError::WrongType("s")));
    }

    #[test]
    fn truncated_is_error_not_panic() {
        let mut b = BytesMut::new();
        BodyWriter::new(&mut b).str("key", "value").unwrap();
        for cut in 0..b.len() {
            let r: Result<Vec<_>, _> = BodyRef::new(&b[..cut]).iter().collect();
            if cut > 0 {
                assert!(r.is_err(), "cut at {cut} must fail");
            }
        }
    }

    #[test]
    fn too_deep_is_rejected() {
        // Build nested lists from the inside out: 16 deep is the limit, 17 is too deep.
        let mut inner = BytesMut::new();
        for _ in 0..MAX_DEPTH {
            let mut outer = BytesMut::new();
            BodyWriter::new(&mut outer).raw_list("l", &inner).unwrap();
            inner = outer;
        }
        assert_eq!(BodyRef::new(&inner).validate(), Ok(()));
        let mut outer = BytesMut::new();
        BodyWriter::new(&mut outer).raw_list("l", &inner).unwrap();
        assert_eq!(
            BodyRef::new(&outer).validate(),
            Err(BodyError::TooDeep(MAX_DEPTH))
        );
    }
}
