/**
 * Paged AdamW (transformers optim `paged_adamw_32bit`, `paged_adamw_8bit`). bitsandbytes pages optimizer
 * states between GPU and CPU memory with CUDA unified memory (peft-spec.md §2.8); on a CPU the analogue is
 * RAM vs disk: the states live in a file-backed region and only one page is in memory at a time, while its
 * parameters update. Resident optimizer memory is one reusable page buffer of at most `memoryBudget` bytes.
 *
 * Pages: parameters are laid out in order; a page holds consecutive parameters whose states fit the budget
 * (a parameter that does not fit the rest of a page starts a new one), and a parameter bigger than the
 * budget is split into slices of whole 256-value blocks (AdamW is
 * elementwise and the 8-bit blocks are independent, so a split changes nothing). Default budget: the
 * states of the largest parameter, i.e. one parameter tensor resident at a time.
 *
 * The file is created in `dir` (the run's output_dir, or os.tmpdir()) and unlinked right away, so it
 * disappears when the process ends however it ends; pages are moved with fs.readSync / fs.writeSync.
 * `paged_adamw_32bit` updates exactly as adamw_torch (same arithmetic, same checkpoint keys `exp_avg`,
 * `exp_avg_sq`); `paged_adamw_8bit` exactly as adamw_8bit (same keys).
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Tensor } from '../tensor/tensor.js';
import type { AdamWOptions, Optimizer, ParamGroup } from './adamw.js';
import { type AdamHyper, adamUpdate32Bnb, adamUpdate8bit, MIN_8BIT_SIZE, OPTIM_BLOCKSIZE, type OptimMaps, optimMaps } from './adamw8bit.js';

export interface PagedAdamWOptions extends AdamWOptions {
  bits: 32 | 8;
  /** Most bytes of optimizer state in memory at once (default: the largest parameter's states). */
  memoryBudget?: number;
  /** Folder for the backing file (default os.tmpdir()). */
  dir?: string;
  /** 8-bit mode: smaller parameters keep f32 states (default 4096). */
  minSize8bit?: number;
}

/** A run of values [start, end) of one parameter, and where its states sit in the file. */
interface Slice {
  p: Tensor;
  weightDecay: number;
  start: number;
  end: number;
  /** 8-bit codes (true) or f32 states (false). */
  q8: boolean;
  /** Byte offset of this slice's states inside its page. */
  offset: number;
  bytes: number;
}

interface Page {
  fileOffset: number;
  bytes: number;
  slices: Slice[];
}

function sliceBytes(n: number, q8: boolean): number {
  // f32: m, v. 8-bit: absmax1, absmax2 (f32 per block), then codes1, codes2 — padded to 4 bytes.
  if (!q8) return 8 * n;
  const nb = Math.ceil(n / OPTIM_BLOCKSIZE);
  return 8 * nb + ((2 * n + 3) & ~3);
}

/** Typed views of a slice's states inside a page buffer. */
function views(buf: ArrayBuffer, s: Slice): { m: Float32Array; v: Float32Array } | { s1: Uint8Array; s2: Uint8Array; a1: Float32Array; a2: Float32Array } {
  const n = s.end - s.start;
  if (!s.q8) return { m: new Float32Array(buf, s.offset, n), v: new Float32Array(buf, s.offset + 4 * n, n) };
  const nb = Math.ceil(n / OPTIM_BLOCKSIZE);
  return {
    a1: new Float32Array(buf, s.offset, nb),
    a2: new Float32Array(buf, s.offset + 4 * nb, nb),
    s1: new Uint8Array(buf, s.offset + 8 * nb, n),
    s2: new Uint8Array(buf, s.offset + 8 * nb + n, n),
  };
}

export class PagedAdamW implements Optimizer {
  lr: number;
  private readonly b1: number;
  private readonly b2: number;
  private readonly eps: number;
  private t = 0;
  private maps: OptimMaps;
  readonly bits: 32 | 8;
  readonly memoryBudget: number;
  private readonly pages: Page[] = [];
  private readonly buffer: ArrayBuffer;
  private fd: number | null;
  private readonly fileBytes: number;
  /** Pages read and written so far (for tests and reports). */
  pageIns = 0;

  constructor(
    readonly groups: ParamGroup[],
    o: PagedAdamWOptions,
  ) {
    this.lr = o.lr;
    [this.b1, this.b2] = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    this.bits = o.bits;
    this.maps = optimMaps();
    const who = `paged_adamw_${o.bits}bit`;
    const minSize = o.minSize8bit ?? MIN_8BIT_SIZE;
    const seen = new Set<string>();
    const params: { p: Tensor; wd: number; q8: boolean }[] = [];
    for (const g of groups) for (const p of g.params) {
      if (!p.name) throw new Error(`${who}: every parameter needs a name (set by parameter(t, name)) for its checkpointed state`);
      if (seen.has(p.name)) throw new Error(`${who}: two parameters are named '${p.name}'`);
      seen.add(p.name);
      params.push({ p, wd: g.weightDecay, q8: o.bits === 8 && p.size >= minSize });
    }
    const largest = Math.max(0, ...params.map(({ p, q8 }) => sliceBytes(p.size, q8)));
    const budget = o.memoryBudget ?? largest;
    const minChunk = sliceBytes(OPTIM_BLOCKSIZE, o.bits === 8);
    const needed = Math.max(0, ...params.map(({ p, q8 }) => Math.min(sliceBytes(p.size, q8), sliceBytes(OPTIM_BLOCKSIZE, q8))));
    if (!(budget >= needed)) {
      throw new Error(`${who}: optim_memory_budget ${budget} bytes is too small; it must hold at least one block of 256 values (${needed} bytes; ${minChunk} per block)`);
    }
    this.memoryBudget = budget;
    // Lay out pages.
    let page: Page = { fileOffset: 0, bytes: 0, slices: [] };
    let fileOffset = 0;
    const flush = () => {
      if (page.slices.length) {
        this.pages.push(page);
        fileOffset += page.bytes;
      }
      page = { fileOffset, bytes: 0, slices: [] };
    };
    for (const { p, wd, q8 } of params) {
      let start = 0;
      while (start < p.size) {
        // Largest run of whole blocks from `start` that fits what is left of the page (or a fresh page).
        const room = budget - page.bytes;
        let n = p.size - start;
        if (sliceBytes(n, q8) > room && sliceBytes(n, q8) <= budget && page.slices.length) {
          flush(); // it fits a page of its own: do not split it
          continue;
        }
        if (sliceBytes(n, q8) > room) {
          // Bigger than a page: whole blocks, each costing exactly sliceBytes(256).
          n = Math.floor(room / sliceBytes(OPTIM_BLOCKSIZE, q8)) * OPTIM_BLOCKSIZE;
          if (n === 0) {
            if (page.slices.length === 0) throw new Error(`${who}: internal error laying out pages for '${p.name}'`);
            flush();
            continue;
          }
        }
        const bytes = sliceBytes(n, q8);
        page.slices.push({ p, weightDecay: wd, start, end: start + n, q8, offset: page.bytes, bytes });
        page.bytes += bytes;
        start += n;
      }
    }
    flush();
    this.fileBytes = fileOffset;
    this.buffer = new ArrayBuffer(Math.max(8, ...this.pages.map((pg) => pg.bytes)));
    // The backing file: zeros = fresh states (code 0 of the unsigned map and absmax 0 decode to 0; for the
    // signed map absmax 0 makes every code 0).
    const base = mkdtempSync(join(o.dir ?? tmpdir(), '.ajuste-paged-optim-'));
    const file = join(base, 'states.bin');
    this.fd = openSync(file, 'w+');
    ftruncateSync(this.fd, this.fileBytes);
    try {
      unlinkSync(file);
      rmdirSync(base);
    } catch {
      // A platform that cannot unlink an open file: it stays until close().
    }
  }

  /** Bytes of optimizer state held in memory (the page buffer), at most memoryBudget. */
  residentBytes(): number {
    return this.buffer.byteLength;
  }

  /** Bytes of optimizer state in the backing file. */
  pagedBytes(): number {
    return this.fileBytes;
  }

  private fdOrThrow(): number {
    if (this.fd === null) throw new Error('paged optimizer: used after close()');
    return this.fd;
  }

  private readPage(pg: Page): void {
    const fd = this.fdOrThrow();
    const u8 = new Uint8Array(this.buffer, 0, pg.bytes);
    let done = 0;
    while (done < pg.bytes) {
      const r = readSync(fd, u8, done, pg.bytes - done, pg.fileOffset + done);
      if (r <= 0) throw new Error(`paged optimizer: short read of the state file at byte ${pg.fileOffset + done}`);
      done += r;
    }
    this.pageIns++;
  }

  private writePage(pg: Page): void {
    const fd = this.fdOrThrow();
    const u8 = new Uint8Array(this.buffer, 0, pg.bytes);
    let done = 0;
    while (done < pg.bytes) done += writeSync(fd, u8, done, pg.bytes - done, pg.fileOffset + done);
  }

  step(): void {
    this.t++;
    const { b1, b2, eps, lr } = this;
    for (const pg of this.pages) {
      if (!pg.slices.some((s) => s.p.grad)) continue;
      this.readPage(pg);
      for (const s of pg.slices) {
        if (!s.p.grad) continue;
        const w = (s.p.f as Float32Array).subarray(s.start, s.end);
        const g = (s.p.grad.f as Float32Array).subarray(s.start, s.end);
        const vw = views(this.buffer, s);
        const h: AdamHyper = { lr, b1, b2, eps, weightDecay: s.weightDecay, step: this.t };
        if ('m' in vw) {
          if (this.bits === 32) adamUpdateTorch(w, g, vw.m, vw.v, h);
          else adamUpdate32Bnb(w, g, vw.m, vw.v, h);
        } else adamUpdate8bit(w, g, vw.s1, vw.s2, vw.a1, vw.a2, h, this.maps);
      }
      this.writePage(pg);
    }
  }

  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad?.f.fill(0);
  }

  /** The full states in memory (for a checkpoint), under adamw_torch's keys (32-bit) or adamw_8bit's (8-bit). */
  stateDict(): { step: number; tensors: Map<string, Float32Array | Uint8Array> } {
    const tensors = new Map<string, Float32Array | Uint8Array>();
    if (this.bits === 8) {
      tensors.set('qmap1', this.maps.qmap1);
      tensors.set('qmap2', this.maps.qmap2);
    }
    const [k1, k2] = this.bits === 32 ? ['exp_avg', 'exp_avg_sq'] : ['state1', 'state2'];
    for (const pg of this.pages) {
      this.readPage(pg);
      for (const s of pg.slices) {
        const n = s.p.size;
        const vw = views(this.buffer, s);
        const get = <T extends Float32Array | Uint8Array>(key: string, make: () => T): T => {
          let a = tensors.get(key) as T | undefined;
          if (!a) tensors.set(key, (a = make()));
          return a;
        };
        if ('m' in vw) {
          get(`${s.p.name}.${k1}`, () => new Float32Array(n)).set(vw.m, s.start);
          get(`${s.p.name}.${k2}`, () => new Float32Array(n)).set(vw.v, s.start);
        } else {
          const nb = Math.ceil(n / OPTIM_BLOCKSIZE), b0 = s.start / OPTIM_BLOCKSIZE;
          get(`${s.p.name}.state1`, () => new Uint8Array(n)).set(vw.s1, s.start);
          get(`${s.p.name}.state2`, () => new Uint8Array(n)).set(vw.s2, s.start);
          get(`${s.p.name}.absmax1`, () => new Float32Array(nb)).set(vw.a1, b0);
          get(`${s.p.name}.absmax2`, () => new Float32Array(nb)).set(vw.a2, b0);
        }
      }
    }
    return { step: this.t, tensors };
  }

  loadStateDict(sd: { step: number; tensors: Map<string, Float32Array | Uint8Array> }): void {
    const who = `paged_adamw_${this.bits}bit state`;
    if (this.bits === 8) {
      const q1 = sd.tensors.get('qmap1'), q2 = sd.tensors.get('qmap2');
      if (q1 instanceof Float32Array && q2 instanceof Float32Array) this.maps = optimMaps(q1.slice(), q2.slice());
    }
    const [k1, k2] = this.bits === 32 ? ['exp_avg', 'exp_avg_sq'] : ['state1', 'state2'];
    const need = <T extends Float32Array | Uint8Array>(key: string, type: new (n: number) => T, n: number): T => {
      const a = sd.tensors.get(key);
      if (!a || !(a instanceof type) || a.length !== n) throw new Error(`${who}: '${key}' is missing or has the wrong type/size (expected ${type.name}[${n}]); was the checkpoint written by another optimizer?`);
      return a as T;
    };
    for (const pg of this.pages) {
      for (const s of pg.slices) {
        const n = s.p.size;
        const vw = views(this.buffer, s);
        if ('m' in vw) {
          vw.m.set(need(`${s.p.name}.${k1}`, Float32Array, n).subarray(s.start, s.end));
          vw.v.set(need(`${s.p.name}.${k2}`, Float32Array, n).subarray(s.start, s.end));
        } else {
          const nb = Math.ceil(n / OPTIM_BLOCKSIZE), b0 = s.start / OPTIM_BLOCKSIZE, b1 = Math.ceil(s.end / OPTIM_BLOCKSIZE);
          vw.s1.set(need(`${s.p.name}.state1`, Uint8Array, n).subarray(s.start, s.end));
          vw.s2.set(need(`${s.p.name}.state2`, Uint8Array, n).subarray(s.start, s.end));
          vw.a1.set(need(`${s.p.name}.absmax1`, Float32Array, nb).subarray(b0, b1));
          vw.a2.set(need(`${s.p.name}.absmax2`, Float32Array, nb).subarray(b0, b1));
        }
      }
      this.writePage(pg);
    }
    this.t = sd.step;
  }

  /** In-memory optimizer state: the page buffer. */
  stateBytes(): number {
    return this.residentBytes();
  }

  /** Closes the backing file (its space is freed; the optimizer is unusable afterwards). */
  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** AdamW exactly as adamw.ts (torch.optim.AdamW arithmetic: decay first), on a slice. */
export function adamUpdateTorch(w: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, h: AdamHyper): void {
  const { b1, b2, eps, lr } = h;
  const bc1 = 1 - b1 ** h.step;
  const bc2 = Math.sqrt(1 - b2 ** h.step);
  const stepSize = lr / bc1;
  const decay = 1 - lr * h.weightDecay;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i]!;
    const mi = (m[i] = b1 * m[i]! + (1 - b1) * gi);
    const vi = (v[i] = b2 * v[i]! + (1 - b2) * gi * gi);
    w[i] = w[i]! * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2 + eps);
  }
}
