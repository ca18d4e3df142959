/**
 * Debian's archive indexes, read (pure: text in, facts out). The `Release` part of a verified
 * InRelease (only the signed text gpgv hands back: see ./gpgv.ts), and the stanzas of a `Packages`
 * file, streamed line by line so that a 50 MB index is never held: only the stanzas of the locked
 * packages are kept, and the versions seen of their names (for the refusal message).
 */
import { DependencyRefused } from './errors.js';

export interface ReleaseFile {
  suite?: string;
  codename?: string;
  /** Seconds since the epoch, when the file says. */
  validUntil?: number;
  acquireByHash: boolean;
  /** SHA256 section: path (`main/binary-amd64/Packages.gz`) → size and digest. */
  sha256: Map<string, { size: number; sha256: string }>;
}

const MAX_RELEASE_ENTRIES = 100_000;

export function parseRelease(text: string, where: string): ReleaseFile {
  const out: ReleaseFile = { acquireByHash: false, sha256: new Map() };
  let section: string | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith(' ')) {
      if (section !== 'SHA256') continue;
      const m = /^ ([0-9a-f]{64}) +(\d{1,15}) +(\S+)$/.exec(line);
      if (!m) throw new DependencyRefused(`${where}: a malformed SHA256 line in the Release file`);
      if (out.sha256.size >= MAX_RELEASE_ENTRIES) throw new DependencyRefused(`${where}: more than ${MAX_RELEASE_ENTRIES} files in the Release file`);
      out.sha256.set(m[3]!, { sha256: m[1]!, size: Number(m[2]) });
      continue;
    }
    const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
    if (!m) throw new DependencyRefused(`${where}: a malformed line in the Release file`);
    const [, field, value] = m as unknown as [string, string, string];
    section = field;
    if (field === 'Suite') out.suite = value.trim();
    if (field === 'Codename') out.codename = value.trim();
    if (field === 'Acquire-By-Hash') out.acquireByHash = value.trim() === 'yes';
    if (field === 'Valid-Until') {
      const t = Date.parse(value.trim());
      if (Number.isNaN(t)) throw new DependencyRefused(`${where}: an unreadable Valid-Until`);
      out.validUntil = Math.floor(t / 1000);
    }
  }
  return out;
}

/** The fields kept of a stanza. */
export interface PackageStanza {
  package: string;
  version: string;
  architecture: string;
  filename: string;
  size: number;
  sha256: string;
}

const MAX_STANZA_BYTES = 1024 * 1024;
const MAX_LINE_BYTES = 1024 * 1024;

/**
 * Feeds a Packages file (decompressed, in chunks) and keeps the stanzas whose
 * `name version architecture` key is wanted, and every version seen of a wanted name.
 */
export class PackagesScanner {
  readonly found = new Map<string, PackageStanza>();
  readonly versionsSeen = new Map<string, Set<string>>();
  private rest = '';
  private fields: Record<string, string> = {};
  private stanzaBytes = 0;

  constructor(
    private readonly wanted: ReadonlySet<string>,
    private readonly wantedNames: ReadonlySet<string>,
    private readonly where: string,
  ) {}

  static key(name: string, version: string, architecture: string): string {
    return `${name} ${version} ${architecture}`;
  }

  push(chunk: string): void {
    const text = this.rest + chunk;
    let start = 0;
    for (let nl = text.indexOf('\n', start); nl !== -1; nl = text.indexOf('\n', start)) {
      this.line(text.slice(start, nl));
      start = nl + 1;
    }
    this.rest = text.slice(start);
    if (this.rest.length > MAX_LINE_BYTES) throw new DependencyRefused(`${this.where}: a line longer than ${MAX_LINE_BYTES} bytes in the Packages file`);
  }

  end(): void {
    if (this.rest !== '') this.line(this.rest);
    this.rest = '';
    this.line('');
  }

  private line(line: string): void {
    if (line === '') {
      this.stanza();
      return;
    }
    this.stanzaBytes += line.length + 1;
    if (this.stanzaBytes > MAX_STANZA_BYTES) throw new DependencyRefused(`${this.where}: a stanza larger than ${MAX_STANZA_BYTES} bytes in the Packages file`);
    if (line.startsWith(' ') || line.startsWith('\t')) return; // a continuation (descriptions): none of the kept fields has one
    const colon = line.indexOf(':');
    if (colon <= 0) return;
    const field = line.slice(0, colon);
    if (field === 'Package' || field === 'Version' || field === 'Architecture' || field === 'Filename' || field === 'Size' || field === 'SHA256') {
      this.fields[field] = line.slice(colon + 1).trim();
    }
  }

  private stanza(): void {
    const f = this.fields;
    this.fields = {};
    this.stanzaBytes = 0;
    const name = f.Package;
    if (name === undefined || !this.wantedNames.has(name)) return;
    const version = f.Version ?? '';
    const arch = f.Architecture ?? '';
    let seen = this.versionsSeen.get(name);
    if (!seen) this.versionsSeen.set(name, (seen = new Set()));
    if (seen.size < 50) seen.add(`${version} (${arch})`);
    const key = PackagesScanner.key(name, version, arch);
    if (!this.wanted.has(key) || this.found.has(key)) return;
    const size = Number(f.Size);
    const filename = f.Filename ?? '';
    const sha256 = f.SHA256 ?? '';
    const what = `${name} ${version} (${arch})`;
    if (!/^pool\/[A-Za-z0-9+._~-]+(?:\/[A-Za-z0-9+._~-]+)*\.u?deb$/.test(filename) || filename.split('/').some((s) => s === '..' || s === '.')) {
      throw new DependencyRefused(`${this.where}: ${what}: the index names an unacceptable file ${JSON.stringify(filename.slice(0, 200))}`);
    }
    if (!Number.isSafeInteger(size) || size < 0) throw new DependencyRefused(`${this.where}: ${what}: the index gives no size`);
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw new DependencyRefused(`${this.where}: ${what}: the index gives no SHA256`);
    this.found.set(key, { package: name, version, architecture: arch, filename, size, sha256 });
  }
}
