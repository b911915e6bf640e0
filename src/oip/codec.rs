//! The Open Inference Protocol's binary tensor forms, shared by the REST binary extension and
//! gRPC's raw contents: BYTES elements as a 4-byte little-endian length then the bytes, FP32 as
//! little-endian floats, BOOL as one byte each.

use bytes::Bytes;

use super::OutputData;

/// The BYTES elements of `data` (slices of it, not copies), if it is exactly a sequence of
/// length-prefixed elements. An empty buffer holds no elements.
pub fn split_bytes_elements(data: &Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let len = u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize;
        let end = at.checked_add(4)?.checked_add(len)?;
        if end > data.len() {
            return None;
        }
        out.push(data.slice(at + 4..end));
        at = end;
    }
    Some(out)
}

/// FP32 values from little-endian bytes, if the length is a whole number of them.
pub fn fp32_values(data: &[u8]) -> Option<Vec<f32>> {
    data.len().is_multiple_of(4).then(|| {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// Appends an output's data in its binary form to `out`.
pub fn write_output(data: &OutputData, out: &mut Vec<u8>) {
    match data {
        OutputData::Fp32(values) => {
            out.reserve(values.len() * 4);
            values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        OutputData::Bytes(items) => items.iter().for_each(|item| {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item);
        }),
        OutputData::Bool(flags) => out.extend(flags.iter().map(|&f| u8::from(f))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(items: &[&[u8]]) -> Bytes {
        let mut out = Vec::new();
        write_output(
            &OutputData::Bytes(items.iter().map(|i| i.to_vec()).collect()),
            &mut out,
        );
        Bytes::from(out)
    }

    #[test]
    fn bytes_elements_round_trip_and_malformed_framing_is_refused() {
        let data = framed(&[b"abc", b"", b"de"]);
        let items = split_bytes_elements(&data).unwrap();
        assert_eq!(items, vec![&b"abc"[..], &b""[..], &b"de"[..]]);
        assert_eq!(split_bytes_elements(&Bytes::new()), Some(vec![]));
        // A length past the end, and a length prefix cut short.
        assert_eq!(split_bytes_elements(&data.slice(..data.len() - 1)), None);
        assert_eq!(split_bytes_elements(&Bytes::from_static(&[1, 0])), None);
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(split_bytes_elements(&huge), None);
    }

    #[test]
    fn fp32_values_are_little_endian_and_whole() {
        let mut out = Vec::new();
        write_output(&OutputData::Fp32(vec![1.5, -2.0]), &mut out);
        assert_eq!(fp32_values(&out), Some(vec![1.5, -2.0]));
        assert_eq!(fp32_values(&out[..7]), None);
    }
}
