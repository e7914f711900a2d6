//! dlib's serialization primitives (`dlib/serialize.h`), shared by every dlib model file
//! we read: the shape predictors and the DNNs.

/// A malformed file: what was expected, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at byte {offset}: {what}")]
pub struct FormatError {
    pub offset: usize,
    pub what: String,
}

/// A cursor over a dlib-serialized buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error at the current offset.
    pub fn err(&self, what: impl Into<String>) -> FormatError {
        FormatError {
            offset: self.pos,
            what: what.into(),
        }
    }

    /// An error at a given offset (the start of the item that was wrong).
    pub fn err_at(&self, offset: usize, what: impl Into<String>) -> FormatError {
        FormatError {
            offset,
            what: what.into(),
        }
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let b = self
            .buf
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| self.err(format!("unexpected end of file in {what}")))?;
        self.pos += n;
        Ok(b)
    }

    /// dlib's integer: a control byte (low nibble = byte count, 0x80 = negative), then
    /// that many little-endian bytes.
    pub fn int(&mut self) -> Result<i64, FormatError> {
        let ctrl = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of file, expected an integer"))?;
        if ctrl & 0x70 != 0 {
            return Err(self.err(format!("bad integer control byte {ctrl:#04x}")));
        }
        let size = (ctrl & 0x0F) as usize;
        if size > 8 {
            return Err(self.err(format!("integer of {size} bytes")));
        }
        let start = self.pos;
        self.pos += 1;
        let bytes = self.bytes(size, "an integer").map_err(|mut e| {
            e.offset = start;
            e
        })?;
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            v |= (*b as u64) << (8 * i);
        }
        let v = v as i64;
        Ok(if ctrl & 0x80 != 0 { -v } else { v })
    }

    /// A non-negative integer no larger than `max`.
    pub fn uint(&mut self, what: &str, max: u64) -> Result<usize, FormatError> {
        let at = self.pos;
        let v = self.int()?;
        if v < 0 || v as u64 > max {
            return Err(self.err_at(at, format!("{what} = {v}, expected 0..={max}")));
        }
        Ok(v as usize)
    }

    /// An integer in `lo..=hi` (a version with several known values).
    pub fn int_in(&mut self, what: &str, lo: i64, hi: i64) -> Result<i64, FormatError> {
        let at = self.pos;
        let v = self.int()?;
        if !(lo..=hi).contains(&v) {
            return Err(self.err_at(at, format!("{what} = {v}, expected {lo} to {hi}")));
        }
        Ok(v)
    }

    /// An integer that must equal `want` (a version number, a fixed size).
    pub fn expect_int(&mut self, what: &str, want: i64) -> Result<(), FormatError> {
        let at = self.pos;
        let v = self.int()?;
        if v != want {
            return Err(self.err_at(at, format!("{what} = {v}, expected {want}")));
        }
        Ok(())
    }

    /// dlib's float/double: mantissa (int64) and exponent (int16) as integers; m * 2^e.
    pub fn double(&mut self) -> Result<f64, FormatError> {
        let ctrl = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of file, expected a float"))?;
        if ctrl & 0x70 != 0 {
            return Err(self.err("old ASCII float format is not supported"));
        }
        let m = self.int()?;
        let at = self.pos;
        let e = self.int()?;
        if !(-32768..=32767).contains(&e) {
            return Err(self.err_at(at, "float exponent out of range"));
        }
        // dlib marks inf and NaN with special exponents.
        Ok(match e {
            32000 => f64::INFINITY,
            32001 => f64::NEG_INFINITY,
            32002 => f64::NAN,
            _ => m as f64 * 2f64.powi(e as i32),
        })
    }

    pub fn float(&mut self) -> Result<f32, FormatError> {
        Ok(self.double()? as f32)
    }

    /// `bool`: one ASCII byte, '1' or '0'.
    pub fn bool(&mut self) -> Result<bool, FormatError> {
        let at = self.pos;
        match self.bytes(1, "a bool")?[0] {
            b'0' => Ok(false),
            b'1' => Ok(true),
            v => Err(self.err_at(at, format!("bool byte {v:#04x}, expected '0' or '1'"))),
        }
    }

    /// `std::string`: its length as an integer, then the bytes.
    pub fn string(&mut self) -> Result<String, FormatError> {
        let at = self.pos;
        let n = self.uint("string length", 1 << 20)?;
        let b = self.bytes(n, "a string")?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err_at(at, "string is not UTF-8"))
    }

    /// A string that must equal `want` (dlib's layer and version tags).
    pub fn expect_string(&mut self, want: &str) -> Result<(), FormatError> {
        let at = self.pos;
        let s = self
            .string()
            .map_err(|e| self.err_at(at, format!("expected the tag \"{want}\" ({})", e.what)))?;
        if s != want {
            return Err(self.err_at(at, format!("found \"{s}\", expected \"{want}\"")));
        }
        Ok(())
    }

    /// `n` little-endian IEEE f32 values (how dlib writes tensor data).
    pub fn f32s_le(&mut self, n: usize, what: &str) -> Result<Vec<f32>, FormatError> {
        let len = n
            .checked_mul(4)
            .ok_or_else(|| self.err(format!("{what}: size overflow")))?;
        let b = self.bytes(len, what)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// `matrix<float,0,1>`: rows and columns (written negated by current dlib), then values.
    pub fn column(&mut self) -> Result<Vec<f32>, FormatError> {
        let at = self.pos;
        let nr = self.int()?.unsigned_abs() as usize;
        let nc = self.int()?.unsigned_abs() as usize;
        if nc != 1 || nr > 1_000_000 {
            return Err(self.err_at(at, format!("expected a column vector, found {nr}x{nc}")));
        }
        (0..nr).map(|_| self.float()).collect()
    }
}

/// Writers of dlib's serialization, for tests that build small model files.
pub mod write {
    /// dlib's integer encoding.
    pub fn int(out: &mut Vec<u8>, v: i64) {
        let neg = v < 0;
        let mut u = v.unsigned_abs();
        let mut bytes = Vec::new();
        while u != 0 {
            bytes.push((u & 0xFF) as u8);
            u >>= 8;
        }
        if bytes.is_empty() {
            bytes.push(0);
        }
        out.push(bytes.len() as u8 | if neg { 0x80 } else { 0 });
        out.extend(bytes);
    }

    /// dlib's float encoding (mantissa, exponent), exact for any finite f64.
    pub fn double(out: &mut Vec<u8>, v: f64) {
        if v == 0.0 {
            int(out, 0);
            int(out, 0);
            return;
        }
        let bits = v.to_bits();
        let sign = if bits >> 63 == 1 { -1i64 } else { 1 };
        let exp = ((bits >> 52) & 0x7FF) as i64;
        let frac = (bits & ((1 << 52) - 1)) as i64;
        let (mut m, mut e) = if exp == 0 {
            (frac, -1074)
        } else {
            (frac | (1 << 52), exp - 1075)
        };
        while m & 1 == 0 {
            m >>= 1;
            e += 1;
        }
        int(out, sign * m);
        int(out, e);
    }

    pub fn float(out: &mut Vec<u8>, v: f32) {
        double(out, v as f64)
    }

    pub fn bool(out: &mut Vec<u8>, v: bool) {
        out.push(if v { b'1' } else { b'0' });
    }

    pub fn string(out: &mut Vec<u8>, s: &str) {
        int(out, s.len() as i64);
        out.extend_from_slice(s.as_bytes());
    }

    pub fn f32s_le(out: &mut Vec<u8>, v: &[f32]) {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }

    pub fn column(out: &mut Vec<u8>, v: &[f32]) {
        int(out, -(v.len() as i64));
        int(out, -1);
        for x in v {
            float(out, *x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_floats_round_trip() {
        let mut b = Vec::new();
        for v in [0i64, 1, -1, 255, 256, -70000, i64::MAX] {
            write::int(&mut b, v);
        }
        for v in [0.0f64, 1.5, -0.001, 1e-30, 3.25e12] {
            write::double(&mut b, v);
        }
        write::string(&mut b, "con_");
        write::bool(&mut b, true);
        let mut r = Reader::new(&b);
        for v in [0i64, 1, -1, 255, 256, -70000, i64::MAX] {
            assert_eq!(r.int().unwrap(), v);
        }
        for v in [0.0f64, 1.5, -0.001, 1e-30, 3.25e12] {
            assert_eq!(r.double().unwrap(), v);
        }
        assert_eq!(r.string().unwrap(), "con_");
        assert!(r.bool().unwrap());
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn errors_name_the_offset() {
        let mut b = Vec::new();
        write::int(&mut b, 7);
        write::string(&mut b, "relu_");
        let mut r = Reader::new(&b);
        r.int().unwrap();
        let e = r.expect_string("con_").unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.what.contains("relu_") && e.what.contains("con_"), "{e}");
        let e = Reader::new(&b[..1]).int().unwrap_err();
        assert!(e.what.contains("end of file"), "{e}");
        let e = Reader::new(&[0x01]).int().unwrap_err();
        assert_eq!(e.offset, 0);
    }
}
