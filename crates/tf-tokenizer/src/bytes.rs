//! GPT-2's byte-to-unicode table: every byte value gets a printable character,
//! so that BPE can work on strings. The printable Latin-1 bytes (`!`..=`~`,
//! `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes, in increasing
//! order, take the characters U+0100, U+0101, ... (so the space 0x20 is `Ġ`).

/// The character standing for each byte.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("below U+0144: a valid character");
    }
    table
}

/// The inverse of [`byte_to_char`]: the byte a character stands for, if any.
pub struct CharToByte {
    table: Vec<Option<u8>>,
}

impl CharToByte {
    pub fn new() -> Self {
        let forward = byte_to_char();
        let len = forward.iter().map(|&c| c as usize).max().unwrap_or(0) + 1;
        let mut table = vec![None; len];
        for (b, &c) in forward.iter().enumerate() {
            table[c as usize] = Some(b as u8);
        }
        CharToByte { table }
    }

    pub fn get(&self, c: char) -> Option<u8> {
        self.table.get(c as usize).copied().flatten()
    }
}
