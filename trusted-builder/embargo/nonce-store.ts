/**
 * The nonces of accepted embargo requests, durably (the builder's own SQLite file), so that a
 * request replayed after a restart is refused as well as one replayed at once. A nonce is kept
 * until its request's `issuedAt` leaves the acceptance window (after that the request is refused
 * as expired anyway), then pruned. Stored as sha256(member fingerprint, nonce): nothing readable,
 * and one member's nonce never collides with another's.
 *
 * Only requests whose signature verified against a member key reach `admit`, so nobody outside
 * the team can fill the table.
 */
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { StorageFailedError } from '#shared/errors.js';

export class NonceStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    try {
      if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.exec('CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID');
      this.db.exec('CREATE INDEX IF NOT EXISTS seen_expires ON seen (expires)');
    } catch (e) {
      throw new StorageFailedError(`cannot open the embargo nonce store ${file}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Record `nonce` for `scope` (a member's fingerprint) until `expiresAtMs`; false if it was already
   * recorded and has not expired. Written (and synced) before it returns.
   */
  admit(scope: string, nonce: string, expiresAtMs: number, nowMs: number): boolean {
    const key = createHash('sha256').update(scope).update('\0').update(nonce).digest('hex');
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM seen WHERE expires < ?').run(nowMs);
      return this.db.prepare('INSERT INTO seen (key, expires) VALUES (?, ?) ON CONFLICT(key) DO NOTHING').run(key, expiresAtMs).changes === 1;
    })();
  }

  get size(): number {
    return this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM seen').get()?.n ?? 0;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
