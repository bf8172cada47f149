/**
 * Hugging Face Hub: find a model in the standard cache or download it into that cache, the way
 * huggingface_hub does, so Python and ajuste share one cache.
 *
 * Cache layout (huggingface_hub `file_download.py`):
 *   <cache>/models--<org>--<name>/refs/<revision>            the commit hash a branch/tag points to
 *   <cache>/models--<org>--<name>/blobs/<etag>               file contents (sha256 for LFS files, git blob sha1 otherwise)
 *   <cache>/models--<org>--<name>/blobs/<etag>.incomplete    a download in progress (resumed with HTTP Range)
 *   <cache>/models--<org>--<name>/snapshots/<commit>/<file>  relative symlink to ../../blobs/<etag>
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
 *
 * A cached snapshot that holds a config and its weights is used without any request (so a moving
 * branch is not re-checked; pass a revision or delete refs/<branch> to update). Only what ajuste
 * loads is downloaded: configs, tokenizer files, and safetensors weights (the index's shards when the
 * model is sharded); pickled (*.bin, *.pt), TF, Flax and ONNX weights are skipped.
 * Concurrent downloads of the same model by two processes are not locked against each other.
 */
import { createHash } from 'node:crypto';
import {
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  statSync,
  symlinkSync,
  unlinkSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { UserError } from '../errors.js';
import { writeAllSync, writeFileAtomic } from './atomic.js';

export type FetchFn = (url: string, init?: RequestInit) => Promise<Response>;

export interface ResolveModelOptions {
  /** Branch, tag or commit hash. Default 'main'. */
  revision?: string;
  /** Hub cache folder. Default $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Access token (sent as `Authorization: Bearer`). Default $HF_TOKEN, then the token file huggingface-cli login writes. */
  token?: string;
  /** Never touch the network. Default: $HF_HUB_OFFLINE is 1/true/yes/on. */
  offline?: boolean;
  /** fetch to use (tests inject one). Default the global fetch. */
  fetch?: FetchFn;
  /** Hub URL. Default $HF_ENDPOINT or https://huggingface.co. */
  endpoint?: string;
  /** Called as bytes arrive. */
  onProgress?: (p: { file: string; bytes: number; total: number | undefined }) => void;
  /** Attempts per file when a connection drops (each resumes where the last stopped). Default 4. */
  attempts?: number;
}

/** Files besides the weights that a model folder needs (downloaded when the repo has them). */
export const HUB_SIDE_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'vocab.json',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
  'adapter_config.json',
  'model.safetensors.index.json',
];

const SKIPPED_WEIGHTS = /\.(bin|pt|pth|ckpt|pkl|h5|msgpack|onnx|onnx_data|gguf|ot)$/;
const COMMIT = /^[0-9a-f]{40}$/;

function truthy(v: string | undefined): boolean {
  return v !== undefined && ['1', 'true', 'yes', 'on'].includes(v.trim().toLowerCase());
}

/** The hub cache folder huggingface_hub uses, from the environment. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  return join(hfHome(env), 'hub');
}

function hfHome(env: NodeJS.ProcessEnv): string {
  if (env.HF_HOME) return env.HF_HOME;
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface');
}

/** The token to send: option, $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, then $HF_TOKEN_PATH or $HF_HOME/token. */
export function hubToken(explicit?: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (explicit) return explicit;
  const fromEnv = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv) return fromEnv.trim();
  const file = env.HF_TOKEN_PATH || join(hfHome(env), 'token');
  try {
    const t = readFileSync(file, 'utf8').trim();
    return t || undefined;
  } catch {
    return undefined;
  }
}

/** `org/name` -> `models--org--name`. */
export function repoFolderName(id: string): string {
  return `models--${id.split('/').join('--')}`;
}

function checkRepoId(idOrPath: string): void {
  const ok = /^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/.test(idOrPath) && !idOrPath.includes('--') && !idOrPath.includes('..') && idOrPath.length <= 96;
  if (!ok) {
    throw new UserError(
      `${idOrPath}: no such folder, and not a Hugging Face model id (org/name)`,
      'pass an existing model folder or an id such as HuggingFaceTB/SmolLM2-135M',
    );
  }
}

function readRef(repoDir: string, revision: string): string | undefined {
  try {
    const c = readFileSync(join(repoDir, 'refs', revision), 'utf8').trim();
    return COMMIT.test(c) ? c : undefined;
  } catch {
    return undefined;
  }
}

/** True when a snapshot folder has a config and all its safetensors weights (symlinks resolve). */
export function snapshotComplete(dir: string): boolean {
  if (!existsSync(join(dir, 'config.json')) && !existsSync(join(dir, 'adapter_config.json'))) return false;
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    try {
      const wm = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
      const shards = new Set(Object.values(wm));
      return shards.size > 0 && [...shards].every((f) => typeof f === 'string' && existsSync(join(dir, f)));
    } catch {
      return false;
    }
  }
  return existsSync(join(dir, 'model.safetensors')) || existsSync(join(dir, 'adapter_model.safetensors'));
}

/**
 * The cached snapshot folder for `id` at `revision` (branch/tag through refs/, or a commit hash), or
 * undefined when the cache does not have it. Does not check completeness.
 */
export function cachedSnapshot(id: string, opts: { revision?: string; cacheDir?: string } = {}): string | undefined {
  const repoDir = join(opts.cacheDir ?? hubCacheDir(), repoFolderName(id));
  const revision = opts.revision ?? 'main';
  const commit = COMMIT.test(revision) ? revision : readRef(repoDir, revision);
  if (!commit) return undefined;
  const snap = join(repoDir, 'snapshots', commit);
  return existsSync(snap) ? snap : undefined;
}

/**
 * Returns a local model folder for `idOrPath`: an existing path as is; otherwise the Hugging Face
 * cache snapshot of the model id at the revision, downloading what is missing unless offline.
 */
export async function resolveModel(idOrPath: string, opts: ResolveModelOptions = {}): Promise<string> {
  if (existsSync(idOrPath)) return idOrPath;
  checkRepoId(idOrPath);
  const id = idOrPath;
  const revision = opts.revision ?? 'main';
  const cacheDir = opts.cacheDir ?? hubCacheDir();
  const repoDir = join(cacheDir, repoFolderName(id));
  const snap = cachedSnapshot(id, { revision, cacheDir });
  if (snap && snapshotComplete(snap)) return snap;

  const offline = opts.offline ?? truthy(process.env.HF_HUB_OFFLINE);
  if (offline) {
    if (snap) return snap;
    const searched = COMMIT.test(revision) ? join(repoDir, 'snapshots', revision) : join(repoDir, 'refs', revision);
    throw new UserError(
      `${id} (revision ${revision}) is not in the Hugging Face cache and downloads are off (offline / HF_HUB_OFFLINE=1); searched ${searched}`,
      'download it once with network access (unset HF_HUB_OFFLINE), set HF_HUB_CACHE to the cache that has it, or pass a local folder',
    );
  }
  return new Downloader(id, revision, repoDir, opts).run();
}

interface Sibling {
  rfilename: string;
  blobId?: string;
  size?: number;
  lfs?: { sha256?: string; size?: number };
}

interface RepoInfo {
  sha: string;
  siblings: Sibling[];
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

function normalizeEtag(e: string | null): string | undefined {
  if (!e) return undefined;
  const s = e.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  return /^[A-Za-z0-9._-]+$/.test(s) ? s : undefined;
}

class Downloader {
  private readonly fetchFn: FetchFn;
  private readonly endpoint: string;
  private readonly token: string | undefined;

  constructor(
    private readonly id: string,
    private readonly revision: string,
    private readonly repoDir: string,
    private readonly opts: ResolveModelOptions,
  ) {
    this.fetchFn = opts.fetch ?? ((url, init) => fetch(url, init));
    this.endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
    this.token = hubToken(opts.token);
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { 'user-agent': 'ajuste (huggingface_hub-compatible)', ...extra };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    return h;
  }

  private async request(url: string, init: RequestInit, what: string): Promise<Response> {
    let res: Response;
    try {
      res = await this.fetchFn(url, init);
    } catch (e) {
      const cause = (e as Error & { cause?: Error }).cause?.message ?? (e as Error).message;
      throw new UserError(
        `cannot reach ${this.endpoint} to download ${this.id} (${what}): ${cause}`,
        'check the network or HF_ENDPOINT; if the model is already cached, set HF_HUB_OFFLINE=1',
      );
    }
    if (res.ok || res.status === 416 || (res.status >= 300 && res.status < 400)) return res;
    await res.body?.cancel().catch(() => undefined);
    throw this.httpError(res, url, what);
  }

  private httpError(res: Response, url: string, what: string): UserError {
    const code = res.headers.get('x-error-code') ?? '';
    const msg = res.headers.get('x-error-message');
    const detail = `HTTP ${res.status}${code ? ` ${code}` : ''}${msg ? `: ${msg}` : ''}`;
    const page = `${this.endpoint}/${this.id}`;
    if (res.status === 401 || res.status === 403) {
      return new UserError(
        `${this.id}: access denied while fetching ${what} (${detail}) from ${url}`,
        this.token
          ? `the model is gated or private and this token has no access: accept its license at ${page} with the account of your HF_TOKEN, or check the token's permissions`
          : `the model is gated or private (or the id is wrong): accept its license at ${page}, create a token at ${this.endpoint}/settings/tokens and set HF_TOKEN`,
      );
    }
    if (res.status === 404) {
      return new UserError(
        `${this.id}: ${code === 'RevisionNotFound' ? `revision "${this.revision}" not found` : 'not found'} while fetching ${what} (${detail}) from ${url}`,
        code === 'RevisionNotFound' ? 'check the revision (branch, tag or commit hash)' : `check the model id (${page})`,
      );
    }
    return new UserError(`${this.id}: fetching ${what} failed (${detail}) from ${url}`, 'try again later; if the model is cached, set HF_HUB_OFFLINE=1');
  }

  private async repoInfo(): Promise<RepoInfo> {
    const url = `${this.endpoint}/api/models/${this.id}/revision/${encodeURIComponent(this.revision)}?blobs=true`;
    const res = await this.request(url, { headers: this.headers() }, 'the file list');
    let json: unknown;
    try {
      json = await res.json();
    } catch (e) {
      throw new UserError(`${this.id}: ${url} did not return JSON (${(e as Error).message})`, 'check HF_ENDPOINT');
    }
    const info = json as Partial<RepoInfo>;
    if (typeof info?.sha !== 'string' || !COMMIT.test(info.sha) || !Array.isArray(info.siblings)) {
      throw new UserError(`${this.id}: ${url} returned no commit sha or file list`, 'check HF_ENDPOINT');
    }
    const siblings = info.siblings.filter((s): s is Sibling => typeof s?.rfilename === 'string' && !s.rfilename.split('/').includes('..'));
    return { sha: info.sha, siblings };
  }

  async run(): Promise<string> {
    const info = await this.repoInfo();
    const commit = info.sha;
    const snap = join(this.repoDir, 'snapshots', commit);
    const byName = new Map(info.siblings.map((s) => [s.rfilename, s]));
    const topLevel = info.siblings.map((s) => s.rfilename).filter((f) => !f.includes('/'));

    const files = HUB_SIDE_FILES.filter((f) => byName.has(f));
    for (const f of files) await this.fetchFile(commit, byName.get(f)!, snap);

    let weights: string[];
    if (byName.has('model.safetensors.index.json')) {
      const indexPath = join(snap, 'model.safetensors.index.json');
      let wm: unknown;
      try {
        wm = (JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map?: unknown }).weight_map;
      } catch (e) {
        throw new UserError(`${this.id}: model.safetensors.index.json is not valid JSON (${(e as Error).message})`);
      }
      weights = [...new Set(Object.values((wm ?? {}) as Record<string, string>))].sort();
      const missing = weights.filter((w) => !byName.has(w));
      if (missing.length) throw new UserError(`${this.id}: the index names shards the repo does not have: ${missing.slice(0, 3).join(', ')}`);
    } else {
      weights = topLevel.filter((f) => f.endsWith('.safetensors')).sort();
      if (weights.length === 0) {
        const pickled = topLevel.filter((f) => SKIPPED_WEIGHTS.test(f));
        if (pickled.length) {
          throw new UserError(
            `${this.id} (revision ${this.revision}) has no safetensors weights, only ${pickled.slice(0, 3).join(', ')}; ajuste does not load pickled or framework-specific checkpoints (a pickle can run code)`,
            `look for a safetensors revision (the Hub's conversion bot opens "refs/pr/N" pull requests: pass it as the revision), or convert with Python: python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('${this.id}').save_pretrained('out', safe_serialization=True)"`,
          );
        }
      }
    }
    for (const f of weights) await this.fetchFile(commit, byName.get(f)!, snap);

    if (this.revision !== commit) writeFileAtomic(join(this.repoDir, 'refs', this.revision), commit);
    mkdirSync(snap, { recursive: true });
    return snap;
  }

  /** Downloads one file into blobs/ (unless there) and links it from the snapshot. */
  private async fetchFile(commit: string, s: Sibling, snap: string): Promise<void> {
    const file = s.rfilename;
    const link = join(snap, file);
    if (existsSync(link)) return;
    const url = `${this.endpoint}/${this.id}/resolve/${encodeURIComponent(commit)}/${encodePath(file)}`;
    let etag = s.lfs?.sha256 ?? s.blobId;
    const size = s.lfs?.size ?? s.size;
    if (!etag || !/^[A-Za-z0-9._-]+$/.test(etag)) etag = await this.etagOf(url, file);
    const blob = join(this.repoDir, 'blobs', etag);
    if (!existsSync(blob)) await this.download(url, file, blob, { size, sha256: s.lfs?.sha256, gitSha1: s.lfs ? undefined : s.blobId });
    mkdirSync(dirname(link), { recursive: true });
    if (lstatSync(link, { throwIfNoEntry: false })) unlinkSync(link); // a dangling link
    try {
      symlinkSync(relative(dirname(link), blob), link);
    } catch {
      copyFileSync(blob, link); // file systems without symlinks
    }
  }

  /** The blob name of a file when the API gave none: X-Linked-Etag or ETag of a HEAD on the resolve URL. */
  private async etagOf(url: string, file: string): Promise<string> {
    const res = await this.request(url, { method: 'HEAD', redirect: 'manual', headers: this.headers({ 'accept-encoding': 'identity' }) }, file);
    const etag = normalizeEtag(res.headers.get('x-linked-etag')) ?? normalizeEtag(res.headers.get('etag'));
    if (!etag) throw new UserError(`${this.id}: ${url} gave no ETag for ${file}`, 'check HF_ENDPOINT (a Hugging Face Hub or a mirror of it)');
    return etag;
  }

  private async download(url: string, file: string, blob: string, expect: { size?: number; sha256?: string; gitSha1?: string }): Promise<void> {
    mkdirSync(dirname(blob), { recursive: true });
    const partial = `${blob}.incomplete`;
    const attempts = Math.max(1, this.opts.attempts ?? 4);
    let lastError: Error | undefined;
    let total = expect.size;
    for (let attempt = 0; attempt < attempts; attempt++) {
      let have = statSync(partial, { throwIfNoEntry: false })?.size ?? 0;
      if (total !== undefined && have > total) {
        unlinkSync(partial);
        have = 0;
      }
      if (total !== undefined && have === total && have > 0) break;
      const range: Record<string, string> = have > 0 ? { range: `bytes=${have}-` } : {};
      const res = await this.request(url, { headers: this.headers({ 'accept-encoding': 'identity', ...range }) }, file);
      if (res.status === 416) {
        await res.body?.cancel().catch(() => undefined);
        break; // nothing left to fetch; verified below
      }
      if (res.status >= 300) {
        await res.body?.cancel().catch(() => undefined);
        throw new UserError(`${this.id}: fetching ${file} gave HTTP ${res.status} from ${url}`);
      }
      let append = false;
      if (res.status === 206) {
        const cr = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
        append = cr !== null && Number(cr[1]) === have;
        if (cr && cr[2] !== '*') total ??= Number(cr[2]);
        if (!append) {
          await res.body?.cancel().catch(() => undefined);
          if (existsSync(partial)) unlinkSync(partial); // the server answered another range: start over
          continue;
        }
      } else {
        const len = res.headers.get('content-length');
        if (len !== null && total === undefined) total = Number(len);
      }
      const fd = openSync(partial, append ? 'a' : 'w');
      let got = append ? have : 0;
      try {
        if (res.body) {
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            writeAllSync(fd, chunk);
            got += chunk.byteLength;
            this.opts.onProgress?.({ file, bytes: got, total });
          }
        }
        lastError = undefined;
      } catch (e) {
        lastError = e as Error; // connection dropped: keep what arrived and resume
      } finally {
        closeSync(fd);
      }
      if (!lastError && (total === undefined || got >= total)) break;
      lastError ??= new Error(`the connection closed after ${got} of ${total} bytes`);
      if (attempt + 1 < attempts) await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
    }
    const size = statSync(partial, { throwIfNoEntry: false })?.size ?? 0;
    if (lastError || (total !== undefined && size !== total)) {
      throw new UserError(
        `${this.id}: downloading ${file} stopped after ${size}${total !== undefined ? ` of ${total}` : ''} bytes (${lastError?.message ?? 'size mismatch'}); the partial file ${partial} is kept`,
        'run the same command again to resume the download',
      );
    }
    const bad = verify(partial, expect);
    if (bad) {
      unlinkSync(partial);
      throw new UserError(`${this.id}: ${file} is corrupt after download (${bad}); the partial file was deleted`, 'run the same command again to download it anew');
    }
    renameSync(partial, blob);
  }
}

/** Checks a downloaded file against the size and the sha256 (LFS) or git blob sha1 the API gave; returns what is wrong. */
function verify(path: string, expect: { size?: number; sha256?: string; gitSha1?: string }): string | undefined {
  const size = statSync(path).size;
  if (expect.size !== undefined && size !== expect.size) return `${size} bytes, expected ${expect.size}`;
  const algo = expect.sha256 && /^[0-9a-f]{64}$/.test(expect.sha256) ? 'sha256' : expect.gitSha1 && /^[0-9a-f]{40}$/.test(expect.gitSha1) ? 'sha1' : undefined;
  if (!algo) return undefined;
  const h = createHash(algo);
  if (algo === 'sha1') h.update(`blob ${size}\0`);
  const fd = openSync(path, 'r');
  try {
    const buf = new Uint8Array(1 << 22);
    for (let pos = 0; ; ) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    closeSync(fd);
  }
  const got = h.digest('hex');
  const want = algo === 'sha256' ? expect.sha256 : expect.gitSha1;
  return got === want ? undefined : `${algo} ${got}, expected ${want}`;
}
