import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { hubCacheDir, repoFolderName, resolveModel } from '../src/io/hub.js';
import { readSafetensorsFolder, serializeSafetensors } from '../src/io/safetensors.js';

// ---- a fake Hub on 127.0.0.1 ----------------------------------------------------------------------------

interface FakeFile {
  content: Buffer;
  lfs: boolean;
}
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const gitSha1 = (b: Buffer): string => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
const commitOf = (s: string): string => createHash('sha1').update(s).digest('hex');

function safetensorsBytes(n: number, seed: number): Buffer {
  const data = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed));
  const { chunks } = serializeSafetensors({ 'model.embed.weight': { dtype: 'F32', shape: [n / 16, 16], data } }, { format: 'pt' });
  return Buffer.concat(chunks);
}

const MAIN = commitOf('main');
const V1 = commitOf('v1');
const SHARDED = commitOf('sharded');
const WEIGHTS = safetensorsBytes(16 * 1024, 0); // ~64 KB, big enough to cut mid-file
const repos: Record<string, Record<string, Record<string, FakeFile>>> = {
  'org/tiny': {
    [MAIN]: {
      'config.json': { content: Buffer.from('{"model_type":"llama","rev":"main"}'), lfs: false },
      'tokenizer.json': { content: Buffer.from('{"model":{}}'), lfs: false },
      'tokenizer_config.json': { content: Buffer.from('{}'), lfs: false },
      'model.safetensors': { content: WEIGHTS, lfs: true },
      'pytorch_model.bin': { content: Buffer.from('PICKLE'), lfs: true },
      'README.md': { content: Buffer.from('# tiny'), lfs: false },
      'onnx/model.onnx': { content: Buffer.from('ONNX'), lfs: true },
    },
    [V1]: {
      'config.json': { content: Buffer.from('{"model_type":"llama","rev":"v1"}'), lfs: false },
      'model.safetensors': { content: safetensorsBytes(64, 1), lfs: true },
    },
  },
  'org/sharded': {
    [SHARDED]: {
      'config.json': { content: Buffer.from('{}'), lfs: false },
      'model.safetensors.index.json': {
        content: Buffer.from(JSON.stringify({ metadata: {}, weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } })),
        lfs: false,
      },
      'model-00001-of-00002.safetensors': { content: Buffer.concat(serializeSafetensors({ a: { dtype: 'U8', shape: [1], data: Uint8Array.of(1) } }).chunks), lfs: true },
      'model-00002-of-00002.safetensors': { content: Buffer.concat(serializeSafetensors({ b: { dtype: 'U8', shape: [1], data: Uint8Array.of(2) } }).chunks), lfs: true },
      'consolidated.safetensors': { content: Buffer.from('not needed'), lfs: true },
    },
  },
  'org/gated': { [commitOf('gated')]: { 'config.json': { content: Buffer.from('{}'), lfs: false }, 'model.safetensors': { content: safetensorsBytes(16, 2), lfs: true } } },
  'org/pickled': { [commitOf('pickled')]: { 'config.json': { content: Buffer.from('{}'), lfs: false }, 'pytorch_model.bin': { content: Buffer.from('x'), lfs: true } } },
  // served like a mirror whose file list has no blob ids: the downloader must HEAD for the ETag
  'org/mirror': { [commitOf('mirror')]: { 'config.json': { content: Buffer.from('{"m":1}'), lfs: false }, 'model.safetensors': { content: safetensorsBytes(32, 3), lfs: true } } },
};
const refs: Record<string, Record<string, string>> = {
  'org/tiny': { main: MAIN, v1: V1 },
  'org/sharded': { main: SHARDED },
  'org/gated': { main: commitOf('gated') },
  'org/pickled': { main: commitOf('pickled') },
  'org/mirror': { main: commitOf('mirror') },
};
const GATED_TOKEN = 'hf_letmein';

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  range: string | undefined;
}
let seen: Seen[] = [];
let dropOnce: string | null = null; // a file whose next full GET is cut mid-way

function handle(req: IncomingMessage, res: ServerResponse): boolean {
  const url = new URL(req.url!, 'http://x');
  seen.push({ method: req.method!, url: url.pathname + url.search, auth: req.headers.authorization, range: req.headers.range });
  const send = (status: number, body: string, headers: Record<string, string> = {}) => {
    res.writeHead(status, headers);
    res.end(body);
    return true;
  };
  const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  const repo = (api ?? resolve)?.[1] ?? '';
  if (!repos[repo]) return send(401, 'Invalid username or password.', { 'x-error-code': 'RepoNotFound', 'x-error-message': 'Repository not found' });
  if (repo === 'org/gated' && req.headers.authorization !== `Bearer ${GATED_TOKEN}`) {
    return send(401, 'gated', { 'x-error-code': 'GatedRepo', 'x-error-message': 'Access to model org/gated is restricted.' });
  }
  const rev = decodeURIComponent((api ?? resolve)![2]!);
  const commit = refs[repo]![rev] ?? (repos[repo]![rev] ? rev : undefined);
  if (!commit) return send(404, 'no rev', { 'x-error-code': 'RevisionNotFound' });
  const files = repos[repo]![commit]!;
  if (api) {
    if (url.searchParams.get('blobs') !== 'true') return send(400, 'expected ?blobs=true');
    if (repo === 'org/mirror') return send(200, JSON.stringify({ sha: commit, siblings: Object.keys(files).map((rfilename) => ({ rfilename })) }));
    const siblings = Object.entries(files).map(([rfilename, f]) => ({
      rfilename,
      blobId: gitSha1(f.content),
      size: f.content.length,
      ...(f.lfs ? { lfs: { sha256: sha256(f.content), size: f.content.length, pointerSize: 134 } } : {}),
    }));
    return send(200, JSON.stringify({ id: repo, sha: commit, siblings }), { 'content-type': 'application/json' });
  }
  const name = decodeURIComponent(resolve![3]!);
  const f = files[name];
  if (!f) return send(404, 'no file', { 'x-error-code': 'EntryNotFound' });
  const etag = f.lfs ? sha256(f.content) : gitSha1(f.content);
  const headers: Record<string, string> = { etag: `"${etag}"`, 'x-repo-commit': commit, 'accept-ranges': 'bytes' };
  if (f.lfs) {
    headers['x-linked-etag'] = `"${etag}"`;
    headers.etag = `W/"${gitSha1(f.content)}"`; // the pointer file's etag, as the Hub sends for LFS files
  }
  if (req.method === 'HEAD') return send(200, '', { ...headers, 'content-length': String(f.content.length) });
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    const start = Number(m[1]);
    if (start >= f.content.length) return send(416, '', { 'content-range': `bytes */${f.content.length}` });
    res.writeHead(206, { ...headers, 'content-length': String(f.content.length - start), 'content-range': `bytes ${start}-${f.content.length - 1}/${f.content.length}` });
    res.end(f.content.subarray(start));
    return true;
  }
  res.writeHead(200, { ...headers, 'content-length': String(f.content.length) });
  if (dropOnce === name) {
    dropOnce = null;
    res.write(f.content.subarray(0, 20000));
    setTimeout(() => res.socket?.destroy(), 50);
    return true;
  }
  res.end(f.content);
  return true;
}

let server: Server;
let endpoint = '';
let root = '';
let cacheDir = '';
const ENV_KEYS = ['HF_HOME', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_ENDPOINT', 'HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH', 'HF_HUB_OFFLINE'];
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
function restoreEnv(): void {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
}
beforeAll(async () => {
  server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  root = mkdtempSync(join(tmpdir(), 'ajuste-hub-'));
  // never use the developer's real cache, token or endpoint
  for (const k of ENV_KEYS) delete process.env[k];
  process.env.HF_HOME = join(root, 'hf-home');
  process.env.HF_ENDPOINT = 'http://127.0.0.1:9'; // only reached when a test forgets its endpoint
});
afterAll(async () => {
  restoreEnv();
  await new Promise((r) => server.close(r));
  rmSync(root, { recursive: true, force: true });
});
let n = 0;
beforeEach(() => {
  seen = [];
  dropOnce = null;
  cacheDir = join(root, `cache-${n++}`);
});
const opts = (extra: Parameters<typeof resolveModel>[1] = {}) => ({ cacheDir, endpoint, offline: false, token: 'hf_test', ...extra });

// ---- tests -----------------------------------------------------------------------------------------------

describe('resolveModel', () => {
  it('returns an existing path as is', async () => {
    const d = join(root, 'local-model');
    mkdirSync(d, { recursive: true });
    expect(await resolveModel(d, opts())).toBe(d);
    expect(seen).toEqual([]);
  });

  it('downloads into the huggingface_hub cache layout, with the token, skipping pickles and subfolders', async () => {
    const snap = await resolveModel('org/tiny', opts());
    const repoDir = join(cacheDir, 'models--org--tiny');
    expect(snap).toBe(join(repoDir, 'snapshots', MAIN));
    expect(readFileSync(join(repoDir, 'refs', 'main'), 'utf8')).toBe(MAIN);
    expect(readdirSync(snap).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    // snapshot files are relative symlinks into blobs/<sha256 for LFS | git sha1 otherwise>
    expect(lstatSync(join(snap, 'model.safetensors')).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(snap, 'model.safetensors'))).toBe(`../../blobs/${sha256(WEIGHTS)}`);
    expect(readlinkSync(join(snap, 'config.json'))).toBe(`../../blobs/${gitSha1(repos['org/tiny']![MAIN]!['config.json']!.content)}`);
    expect(readdirSync(join(repoDir, 'blobs')).length).toBe(4);
    expect(readFileSync(join(snap, 'model.safetensors')).equals(WEIGHTS)).toBe(true);
    const st = readSafetensorsFolder(snap);
    expect(st.tensors.get('model.embed.weight')!.shape).toEqual([1024, 16]);
    // requests: the file list, then each file; all with the token; none for skipped files
    expect(seen[0]!.url).toBe(`/api/models/org/tiny/revision/main?blobs=true`);
    expect(seen.every((s) => s.auth === 'Bearer hf_test')).toBe(true);
    expect(seen.some((s) => /pytorch_model|README|onnx/.test(s.url))).toBe(false);
    expect(seen.length).toBe(5);
  });

  it('uses the cache on the second call without any request', async () => {
    const first = await resolveModel('org/tiny', opts());
    seen = [];
    expect(await resolveModel('org/tiny', opts())).toBe(first);
    expect(await resolveModel('org/tiny', opts({ revision: MAIN }))).toBe(first);
    expect(await resolveModel('org/tiny', opts({ offline: true }))).toBe(first);
    expect(seen).toEqual([]);
  });

  it('pins revisions: a tag through refs/, a commit hash directly', async () => {
    const v1 = await resolveModel('org/tiny', opts({ revision: 'v1' }));
    expect(v1).toBe(join(cacheDir, 'models--org--tiny', 'snapshots', V1));
    expect(readFileSync(join(v1, 'config.json'), 'utf8')).toContain('"rev":"v1"');
    expect(readFileSync(join(cacheDir, 'models--org--tiny', 'refs', 'v1'), 'utf8')).toBe(V1);
    expect(seen.filter((s) => s.url.includes('/resolve/')).every((s) => s.url.includes(`/resolve/${V1}/`))).toBe(true);
    const byHash = await resolveModel('org/tiny', opts({ revision: MAIN }));
    expect(byHash).toBe(join(cacheDir, 'models--org--tiny', 'snapshots', MAIN));
    expect(readFileSync(join(byHash, 'config.json'), 'utf8')).toContain('"rev":"main"');
    expect(readdirSync(join(cacheDir, 'models--org--tiny', 'refs'))).toEqual(['v1']); // no ref for a hash
    await expect(resolveModel('org/tiny', opts({ revision: 'nope' }))).rejects.toThrow(/org\/tiny: revision "nope" not found/);
  });

  it('downloads only the shards the index names', async () => {
    const snap = await resolveModel('org/sharded', opts());
    expect(readdirSync(snap).sort()).toEqual(['config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
    expect([...readSafetensorsFolder(snap).tensors.keys()].sort()).toEqual(['a', 'b']);
  });

  it('offline and not cached: says which path was searched', async () => {
    await expect(resolveModel('org/tiny', opts({ offline: true }))).rejects.toThrow(
      `org/tiny (revision main) is not in the Hugging Face cache and downloads are off (offline / HF_HUB_OFFLINE=1); searched ${join(cacheDir, 'models--org--tiny', 'refs', 'main')}`,
    );
    expect(seen).toEqual([]);
  });

  it('reads HF_HUB_OFFLINE, HF_HUB_CACHE, HF_ENDPOINT and HF_TOKEN from the environment', async () => {
    try {
      process.env.HF_HUB_CACHE = cacheDir;
      process.env.HF_ENDPOINT = endpoint;
      process.env.HF_TOKEN = GATED_TOKEN;
      process.env.HF_HUB_OFFLINE = '1';
      expect(hubCacheDir()).toBe(cacheDir);
      await expect(resolveModel('org/gated')).rejects.toThrow(/downloads are off/);
      process.env.HF_HUB_OFFLINE = '0';
      const snap = await resolveModel('org/gated');
      expect(snap.startsWith(join(cacheDir, 'models--org--gated', 'snapshots'))).toBe(true);
      expect(seen.every((s) => s.auth === `Bearer ${GATED_TOKEN}`)).toBe(true);
      delete process.env.HF_HUB_CACHE;
      process.env.HF_HOME = join(root, 'hfhome');
      expect(hubCacheDir()).toBe(join(root, 'hfhome', 'hub'));
    } finally {
      for (const k of ENV_KEYS) delete process.env[k];
      process.env.HF_HOME = join(root, 'hf-home');
      process.env.HF_ENDPOINT = 'http://127.0.0.1:9';
    }
  });

  it('401 on a gated model: says to accept the license and set HF_TOKEN', async () => {
    const err = (await resolveModel('org/gated', opts({ token: undefined })).catch((e: Error) => e)) as Error & { hint?: string };
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toMatch(/org\/gated: access denied while fetching the file list \(HTTP 401 GatedRepo: Access to model org\/gated is restricted\.\)/);
    expect(err.hint).toMatch(/gated or private.*set HF_TOKEN/);
    const wrong = await resolveModel('org/gated', opts({ token: 'hf_wrong' })).catch((e: Error & { hint?: string }) => e);
    expect((wrong as { hint?: string }).hint).toMatch(/this token has no access/);
    expect(await resolveModel('org/gated', opts({ token: GATED_TOKEN }))).toContain('models--org--gated');
  });

  it('unknown id: says to check the id; a non-id that is no path: says so', async () => {
    await expect(resolveModel('org/missing', opts())).rejects.toThrow(/org\/missing: access denied .*RepoNotFound/);
    await expect(resolveModel('./no/such/dir/here', opts())).rejects.toThrow(/no such folder, and not a Hugging Face model id/);
  });

  it('refuses a repo with only pickled weights', async () => {
    await expect(resolveModel('org/pickled', opts())).rejects.toThrow(/has no safetensors weights, only pytorch_model.bin/);
  });

  it('resumes a download cut mid-file with an HTTP Range request', async () => {
    dropOnce = 'model.safetensors';
    const snap = await resolveModel('org/tiny', opts());
    expect(readFileSync(join(snap, 'model.safetensors')).equals(WEIGHTS)).toBe(true);
    const gets = seen.filter((s) => s.url.endsWith('/model.safetensors'));
    expect(gets.length).toBe(2);
    expect(gets[0]!.range).toBeUndefined();
    expect(gets[1]!.range).toBe('bytes=20000-');
    expect(readdirSync(join(cacheDir, 'models--org--tiny', 'blobs')).some((f) => f.endsWith('.incomplete'))).toBe(false);
  });

  it('resumes from an .incomplete file left by an earlier run, and rejects a corrupt one', async () => {
    const blobs = join(cacheDir, repoFolderName('org/tiny'), 'blobs');
    mkdirSync(blobs, { recursive: true });
    writeFileSync(join(blobs, `${sha256(WEIGHTS)}.incomplete`), WEIGHTS.subarray(0, 1000));
    const snap = await resolveModel('org/tiny', opts());
    expect(seen.find((s) => s.url.endsWith('/model.safetensors'))!.range).toBe('bytes=1000-');
    expect(readFileSync(join(snap, 'model.safetensors')).equals(WEIGHTS)).toBe(true);

    const other = join(root, `cache-corrupt-${n++}`);
    const b2 = join(other, repoFolderName('org/tiny'), 'blobs');
    mkdirSync(b2, { recursive: true });
    writeFileSync(join(b2, `${sha256(WEIGHTS)}.incomplete`), Buffer.alloc(1000, 7)); // wrong bytes
    await expect(resolveModel('org/tiny', opts({ cacheDir: other }))).rejects.toThrow(/model.safetensors is corrupt after download \(sha256 /);
    expect(existsSync(join(b2, `${sha256(WEIGHTS)}.incomplete`))).toBe(false);
    await resolveModel('org/tiny', opts({ cacheDir: other })); // and the next run downloads it anew
  });

  it('names blobs by X-Linked-Etag / ETag from a HEAD when the file list has no blob ids', async () => {
    const snap = await resolveModel('org/mirror', opts());
    const files = repos['org/mirror']![commitOf('mirror')]!;
    expect(readlinkSync(join(snap, 'model.safetensors'))).toBe(`../../blobs/${sha256(files['model.safetensors']!.content)}`);
    expect(readlinkSync(join(snap, 'config.json'))).toBe(`../../blobs/${gitSha1(files['config.json']!.content)}`);
    expect(seen.filter((s) => s.method === 'HEAD').length).toBe(2);
    expect(readFileSync(join(snap, 'model.safetensors')).equals(files['model.safetensors']!.content)).toBe(true);
  });

  it('repairs a snapshot whose blob was deleted, fetching only that file', async () => {
    const snap = await resolveModel('org/tiny', opts());
    rmSync(join(cacheDir, 'models--org--tiny', 'blobs', sha256(WEIGHTS)));
    seen = [];
    expect(await resolveModel('org/tiny', opts())).toBe(snap);
    expect(seen.map((s) => s.url)).toEqual([`/api/models/org/tiny/revision/main?blobs=true`, `/org/tiny/resolve/${MAIN}/model.safetensors`]);
    expect(readFileSync(join(snap, 'model.safetensors')).equals(WEIGHTS)).toBe(true);
  });

  it('says how to retry when the network is down', async () => {
    const down = async (): Promise<Response> => {
      throw new TypeError('fetch failed', { cause: new Error('connect ECONNREFUSED 127.0.0.1:1') });
    };
    await expect(resolveModel('org/tiny', opts({ fetch: down }))).rejects.toThrow(/cannot reach .* to download org\/tiny \(the file list\): connect ECONNREFUSED/);
  });
});
