/**
 * GPT-2's byte <-> printable-character table (openai/gpt-2 encoder.py `bytes_to_unicode`), used by every
 * byte-level BPE tokenizer: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in order.
 */
let encodeTable: string[] | null = null;
let decodeTable: Map<string, number> | null = null;

/** byte (0..255) -> the one-character string that stands for it in the vocabulary. */
export function byteLevelEncodeTable(): string[] {
  if (encodeTable) return encodeTable;
  const table: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  encodeTable = table;
  return table;
}

/** The inverse: vocabulary character -> byte. */
export function byteLevelDecodeTable(): Map<string, number> {
  if (decodeTable) return decodeTable;
  const enc = byteLevelEncodeTable();
  decodeTable = new Map(enc.map((ch, b) => [ch, b]));
  return decodeTable;
}

/** The vocabulary string for a run of bytes. */
export function bytesToToken(bytes: ArrayLike<number>): string {
  const enc = byteLevelEncodeTable();
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += enc[bytes[i]!];
  return s;
}

/** GPT-2's pre-tokenization split (the regex of tokenizers' ByteLevel pre-tokenizer with use_regex). */
export const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
