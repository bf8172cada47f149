/**
 * Atomic file writes: the data goes to a temporary file in the same directory, is fsync'ed, and is
 * renamed over the target, so a reader (or a crash) sees either the old file or the whole new one.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** Largest single write() we issue (Linux caps one write at ~2 GiB). */
const MAX_WRITE = 1 << 30;

/** Writes all of `bytes` to fd, looping over short writes and slicing huge arrays. */
export function writeAllSync(fd: number, bytes: Uint8Array): void {
  let off = 0;
  while (off < bytes.byteLength) {
    const len = Math.min(MAX_WRITE, bytes.byteLength - off);
    off += writeSync(fd, bytes, off, len);
  }
}

/** A unique temporary name next to `path` (same directory, so rename is atomic). */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
}

/**
 * Writes `data` (bytes, a UTF-8 string, or a list of byte chunks written in order) to `path` atomically:
 * temp file in the same directory, fsync, rename, then fsync of the directory (best effort).
 * Creates the parent directory if needed. On any error the temp file is removed and the target is untouched.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string | Uint8Array[]): void {
  const chunks = typeof data === 'string' ? [Buffer.from(data, 'utf8')] : Array.isArray(data) ? data : [data];
  writeFileAtomicWith(path, (write) => {
    for (const c of chunks) write(c);
  });
}

/**
 * As writeFileAtomic, for output produced piece by piece: `fill` receives a `write(chunk)` function and calls it
 * as often as it likes (each chunk is written before the next is made, so a large file never sits in memory).
 * An error thrown by `fill` is rethrown as it is (after the temp file is removed); an I/O error becomes
 * "cannot write PATH: ...".
 */
export function writeFileAtomicWith(path: string, fill: (write: (chunk: Uint8Array) => void) => void): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true });
  const tmp = tempPathFor(path);
  let fd: number | undefined;
  let fromFill = false;
  try {
    fd = openSync(tmp, 'wx', 0o666);
    const out = fd;
    fromFill = true;
    fill((chunk) => {
      fromFill = false;
      writeAllSync(out, chunk);
      fromFill = true;
    });
    fromFill = false;
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // already failing; the original error matters
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      // the temp file may not exist
    }
    if (fromFill) throw e;
    throw new Error(`cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
  fsyncDir(dir);
}

/** fsync a directory so a rename in it is durable; ignored where directories cannot be opened (Windows). */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // best effort
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
