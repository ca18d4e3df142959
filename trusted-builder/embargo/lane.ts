/**
 * The embargo lane's request handler, behind `POST /v1/embargo` (api/app.ts): authenticate a request
 * (request.ts), do what it asks with the store, and answer sealed to the member who asked.
 *
 * Every request is an audit record (kind `embargo`): a refusal as `request-refused` with its reason,
 * the client address and the signer's key id; an admitted one as `request` with the action, the
 * member, the embargo id it concerns and whether it succeeded. Neither names a project, a patch or
 * a reason (see store.ts on why the audit log is not the place for them).
 *
 * A refused request gets a fixed message ("embargo request refused"), 400 when it cannot even be
 * decrypted and 401 otherwise; why is in the audit log only. What goes wrong after admission (an
 * unknown id, a patch that is not a diff, a project the promotion policy does not list) is answered
 * inside the sealed answer; a failure of the builder itself is logged here and answered as
 * "internal error" (sealed too).
 */
import { join } from 'node:path';
import * as openpgp from 'openpgp';
import { ConflictError, InvalidInputError, isAirlockError, NotFoundError, PolicyInvalidError, UnauthorizedError } from '#shared/errors.js';
import type { Logger } from '#shared/logging.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { EmbargoNotifier } from '../notify/webhook.js';
import { loadEmbargoKey, type EmbargoKey } from './embargo-key.js';
import { NonceStore } from './nonce-store.js';
import { openRequest, sealResponse } from './request.js';
import { EmbargoStore } from './store.js';
import { loadSecurityTeam, type SecurityTeam, type TeamMember } from './team.js';
import { EMBARGO_WIRE_VERSION, MAX_LOG_ANSWER_BYTES, PRIVATE_ARTIFACTS, type EmbargoRequest, type EmbargoResponse, type EmbargoResult } from './wire.js';

/** The one message a refused request gets, whatever the reason. */
export const EMBARGO_REFUSED_MESSAGE = 'embargo request refused';

export interface EmbargoLaneDeps {
  key: EmbargoKey;
  team: SecurityTeam;
  store: EmbargoStore;
  nonces: NonceStore;
  audit: Pick<AuditLog, 'append'>;
  logger: Logger;
  /** Whether the promotion policy lists a project: a patch for any other is refused. */
  knownProject?: (project: string) => boolean;
  now?: () => number;
}

export class EmbargoLane {
  private submitted: ((project: string) => boolean) | undefined;
  private notifier: EmbargoNotifier | undefined;
  /** Warnings under way (a member's retirement is answered without waiting for the webhook). */
  private readonly warnings = new Set<Promise<void>>();

  constructor(private readonly d: EmbargoLaneDeps) {}

  /**
   * Called with the project whenever its set of active patches changed (a submission, a
   * replacement, a member's retirement) or a member asked for a rebuild: the promoter then builds
   * it privately at once, on its latest published commit (false: it has none yet).
   */
  onSubmitted(fn: (project: string) => boolean): void {
    this.submitted = fn;
  }

  /** Where warnings go (the builder's `embargoWebhook`): a member's retirement warns as the builder's own does. */
  notifyWith(notifier: EmbargoNotifier | undefined): void {
    this.notifier = notifier;
  }

  get store(): EmbargoStore {
    return this.d.store;
  }

  /** A detached, armored signature by the embargo key (the team's break warnings are signed so). */
  async signDetached(data: Uint8Array): Promise<string> {
    const message = await openpgp.createMessage({ binary: data });
    return openpgp.sign({ message, signingKeys: this.d.key.privateKey, detached: true, format: 'armored' });
  }

  /**
   * The sealed (armored) answer to an admitted request. A refused one throws InvalidInputError (400)
   * or UnauthorizedError (401) with `EMBARGO_REFUSED_MESSAGE`, after its audit record.
   */
  async handle(armored: string, from: string): Promise<string> {
    const now = (this.d.now ?? Date.now)();
    const opened = await openRequest(armored, { key: this.d.key, team: this.d.team, nonces: this.d.nonces, now });
    if (!opened.ok) {
      await this.d.audit.append('embargo', {
        event: 'request-refused',
        reason: opened.reason,
        from,
        ...(opened.keyId ? { keyId: opened.keyId } : {}),
        ...(opened.member ? { by: opened.member.name } : {}),
      });
      this.d.logger.warn({ reason: opened.reason, detail: opened.detail, from }, 'embargo request refused');
      if (opened.status === 400) throw new InvalidInputError([{ file: 'request', path: '', message: EMBARGO_REFUSED_MESSAGE, severity: 'error' }]);
      throw new UnauthorizedError(EMBARGO_REFUSED_MESSAGE);
    }
    const { request, member } = opened;
    const base = { version: EMBARGO_WIRE_VERSION, inReplyTo: request.nonce } as const;
    let response: EmbargoResponse;
    try {
      response = { ...base, ok: true, result: await this.perform(request, member) };
    } catch (e) {
      const known = isAirlockError(e) && e.httpStatus < 500;
      if (!known) this.d.logger.error({ err: e, action: request.action }, 'embargo request failed');
      response = { ...base, ok: false, error: known ? { code: e.code, message: e.message } : { code: 'AIRLOCK_E_INTERNAL', message: "internal error; the builder's log has the details" } };
    }
    const embargo = response.ok ? embargoOf(response.result) : 'id' in request ? request.id : undefined;
    await this.d.audit.append('embargo', {
      event: 'request',
      action: request.action,
      by: member.name,
      fingerprint: member.fingerprint,
      ...(embargo ? { embargo } : {}),
      ok: response.ok,
      ...(response.ok ? {} : { code: response.error.code }),
    });
    return sealResponse(response, this.d.key, member, new Date(now));
  }

  private async perform(r: EmbargoRequest, member: TeamMember): Promise<EmbargoResult> {
    const store = this.d.store;
    switch (r.action) {
      case 'submit': {
        if (this.d.knownProject && !this.d.knownProject(r.project)) {
          throw new InvalidInputError([{ file: 'request', path: 'project', message: `${JSON.stringify(r.project)} is not a project of the promotion policy`, severity: 'error' }]);
        }
        const done = await store.submit(r.project, r.patch, member.name);
        if (!done.existing) this.submitted?.(r.project);
        return { action: 'submit', ...done };
      }
      case 'list':
        return { action: 'list', embargoes: store.list(r.project === undefined ? {} : { project: r.project }) };
      case 'show':
        return { action: 'show', embargo: await store.get(r.id) };
      case 'retire': {
        const was = store.status(r.id).state;
        const embargo = await store.retire(r.id, r.reason ?? `retired by ${member.name}`, member.name);
        if (was === 'active') {
          this.warn(r.id);
          // The others of its project: without it they may apply again (it may have blocked them).
          this.submitted?.(embargo.project);
        }
        return { action: 'retire', embargo };
      }
      case 'artifacts': {
        const e = store.status(r.id);
        if (!e.lastBuild) throw new NotFoundError(`embargo ${r.id} has no patched image yet (airlock embargo list says why)`);
        const files = [];
        for (const name of PRIVATE_ARTIFACTS) files.push({ name, base64: Buffer.from(await store.artifact(r.id, name)).toString('base64') });
        return { action: 'artifacts', id: r.id, digest: store.list().find((x) => x.id === r.id)!.digest, build: e.lastBuild, files };
      }
      case 'replace': {
        const done = await store.replacePatch(r.id, r.patch, member.name);
        const queued = this.submitted?.(store.status(r.id).project) ?? false;
        return { action: 'replace', id: r.id, ...done, queued };
      }
      case 'rebuild': {
        const e = store.status(r.id);
        if (e.state !== 'active') throw new ConflictError(`embargo ${r.id} is retired: nothing of it is built any more (submit its patch again to embargo it anew)`);
        return { action: 'rebuild', id: r.id, queued: this.submitted?.(e.project) ?? false };
      }
      case 'logs': {
        const all = Buffer.from(await store.logs(r.id), 'utf8');
        const truncated = all.length > MAX_LOG_ANSWER_BYTES;
        return { action: 'logs', id: r.id, text: (truncated ? all.subarray(all.length - MAX_LOG_ANSWER_BYTES) : all).toString('utf8'), truncated };
      }
    }
  }

  /** An opaque warning (webhook.ts), audited with the embargo's id like the promoter's; in the background. */
  private warn(embargo: string): void {
    const p = (async () => {
      const sent = (await this.notifier?.warn()) ?? { delivered: false, attempts: 0, error: 'no notifier configured' };
      await this.d.audit.append('embargo', { event: 'warned', embargo, delivered: sent.delivered, attempts: sent.attempts, ...(sent.error ? { error: sent.error } : {}) });
    })()
      .catch((err: unknown) => this.d.logger.error({ err, embargo }, 'cannot record an embargo warning'))
      .finally(() => this.warnings.delete(p));
    this.warnings.add(p);
  }

  /** Resolves when the warnings under way were sent (or given up) and audited. */
  async idle(): Promise<void> {
    while (this.warnings.size > 0) await Promise.all(this.warnings);
  }

  /** Waits for the warnings under way and the store's pending operations, then closes the nonce table. */
  async close(): Promise<void> {
    await Promise.all(this.warnings);
    await this.d.store.close();
    this.d.nonces.close();
  }
}

function embargoOf(r: EmbargoResult): string | undefined {
  if (r.action === 'submit' || r.action === 'logs' || r.action === 'artifacts' || r.action === 'replace' || r.action === 'rebuild') return r.id;
  if (r.action === 'show' || r.action === 'retire') return r.embargo.id;
  return undefined;
}

export interface OpenEmbargoLaneOptions extends Pick<EmbargoLaneDeps, 'audit' | 'logger' | 'knownProject' | 'now'> {
  /** The `{armored, passphrase?}` secret of `builder.embargoKey`. */
  secret: { armored: string; passphrase?: string };
  /** Names the secret in errors (its path), never the key. */
  source: string;
  /** `policies/security-team`. */
  teamDir: string;
  /** `<dataDir>/embargo`. */
  dir: string;
}

/**
 * Load the embargo key and the team, open the store (re-encrypting it if the team changed) and the
 * nonce table: the lane as the service runs it. Any problem is an error: the builder does not start
 * with a lane it cannot run safely.
 */
export async function openEmbargoLane(o: OpenEmbargoLaneOptions): Promise<EmbargoLane> {
  const now = o.now ?? Date.now;
  const key = await loadEmbargoKey(o.secret.armored, o.secret.passphrase, { source: o.source, now: new Date(now()) });
  const team = await loadSecurityTeam(o.teamDir, { now: new Date(now()) });
  const clash = team.members.find((m) => m.fingerprint === key.fingerprint);
  if (clash) throw new PolicyInvalidError([{ file: clash.file, path: '', message: "is the builder's own embargo key: members use their own keys", severity: 'error' }]);
  const store = await EmbargoStore.open({ dir: o.dir, key, team, audit: o.audit, now });
  const nonces = new NonceStore(join(o.dir, 'nonces.sqlite'));
  await o.audit.append('embargo', { event: 'lane-open', key: key.fingerprint, members: team.members.map((m) => `${m.name} ${m.fingerprint}`), excluded: team.excluded.map((w) => w.file) });
  for (const w of team.excluded) o.logger.warn({ file: w.file }, w.message);
  if (team.members.length === 0) o.logger.warn({ dir: o.teamDir }, 'the embargo lane is on but the security team has no member: every request will be refused');
  return new EmbargoLane({ key, team, store, nonces, audit: o.audit, logger: o.logger, now, ...(o.knownProject ? { knownProject: o.knownProject } : {}) });
}
