/** A minimal line-chart PNG writer (RGB, zlib via node:zlib), enough to plot loss curves. */
import { deflateSync } from 'node:zlib';

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'ascii');
  const body = Buffer.concat([head.subarray(4), Buffer.from(data)]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body), 0);
  return Buffer.concat([head.subarray(0, 4), body, crc]);
}

export function encodePng(width: number, height: number, rgb: Uint8Array): Buffer {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0;
    Buffer.from(rgb.buffer, rgb.byteOffset + y * width * 3, width * 3).copy(raw, y * (width * 3 + 1) + 1);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', new Uint8Array())]);
}

export interface Series {
  points: [number, number][];
  color: [number, number, number];
}

/** Plots series on shared axes (x from the data range, y from 0 to the max) with a light grid. */
export function plotLines(series: Series[], width = 640, height = 400): Buffer {
  const rgb = new Uint8Array(width * height * 3).fill(255);
  const pad = 40;
  const all = series.flatMap((s) => s.points);
  const xmin = Math.min(...all.map((p) => p[0])), xmax = Math.max(...all.map((p) => p[0]));
  const ymax = Math.max(...all.map((p) => p[1])) * 1.05 || 1;
  const X = (x: number) => pad + ((x - xmin) / Math.max(xmax - xmin, 1e-9)) * (width - 2 * pad);
  const Y = (y: number) => height - pad - (y / ymax) * (height - 2 * pad);
  const set = (x: number, y: number, c: readonly number[]) => {
    const xi = Math.round(x), yi = Math.round(y);
    if (xi < 0 || yi < 0 || xi >= width || yi >= height) return;
    rgb.set(c, (yi * width + xi) * 3);
  };
  const line = (x0: number, y0: number, x1: number, y1: number, c: readonly number[], thick = 1) => {
    const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    for (let i = 0; i <= n; i++) {
      const x = x0 + ((x1 - x0) * i) / n, y = y0 + ((y1 - y0) * i) / n;
      for (let d = -(thick >> 1); d <= thick >> 1; d++) {
        set(x, y + d, c);
        set(x + d, y, c);
      }
    }
  };
  for (let k = 0; k <= 5; k++) {
    const y = Y((ymax * k) / 5);
    line(pad, y, width - pad, y, [225, 225, 225]);
  }
  line(pad, height - pad, width - pad, height - pad, [0, 0, 0]);
  line(pad, pad, pad, height - pad, [0, 0, 0]);
  for (const s of series) {
    for (let i = 1; i < s.points.length; i++) {
      const [a, b] = [s.points[i - 1]!, s.points[i]!];
      line(X(a[0]), Y(a[1]), X(b[0]), Y(b[1]), s.color, 3);
    }
    if (s.points.length === 1) line(X(s.points[0]![0]) - 2, Y(s.points[0]![1]), X(s.points[0]![0]) + 2, Y(s.points[0]![1]), s.color, 5);
  }
  return encodePng(width, height, rgb);
}
