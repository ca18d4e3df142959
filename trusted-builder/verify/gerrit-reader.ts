/**
 * The builder's read-only view of Gerrit (`ReviewReader`), over its REST API with the builder's
 * own account (never the CI's): which merged change each commit is the merged patch set of, with
 * its branch, owner, every uploader of its patch sets, the author and committer of its merged
 * commit, its submitter and every vote given before it merged; accounts and group members by
 * account id.
 *
 * `GET /a/changes/?q=project:<p> status:merged (commit:<a> OR commit:<b> …)` with ALL_REVISIONS,
 * CURRENT_COMMIT, DETAILED_LABELS and DETAILED_ACCOUNTS, in batches; `commit:` matches any patch
 * set of a change, so only a change whose *current* (merged) revision is the commit accounts for it.
 * Votes Gerrit marks `post_submit` are left out: they were not part of what let it merge.
 */
import { accountName, GerritClient, type AccountInfo, type ChangeInfo } from '#shared/review/gerrit-rest.js';
import type { AccountRef, MergedChange, ReviewReader } from './review.js';

/** Commits asked about per query (a query's URL stays well under servers' limits). */
const BATCH = 20;

export class GerritReader implements ReviewReader {
  private readonly client: GerritClient;

  constructor(o: { url: string; credentials: { username: string; password: string }; timeoutMs?: number; fetch?: typeof fetch }) {
    this.client = new GerritClient({ url: o.url, credentials: o.credentials, ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}), ...(o.fetch ? { fetch: o.fetch } : {}) });
  }

  get url(): string {
    return this.client.url;
  }

  async mergedChanges(project: string, commits: readonly string[], signal?: AbortSignal): Promise<Map<string, MergedChange>> {
    const out = new Map<string, MergedChange>();
    const wanted = new Set(commits);
    for (let i = 0; i < commits.length; i += BATCH) {
      const batch = commits.slice(i, i + BATCH);
      const q = `project:${project} status:merged (${batch.map((c) => `commit:${c}`).join(' OR ')})`;
      const found = await this.client.query(q, ['ALL_REVISIONS', 'CURRENT_COMMIT', 'DETAILED_LABELS', 'DETAILED_ACCOUNTS'], { limit: 100, max: 1000, ...(signal ? { signal } : {}) });
      for (const info of found) {
        const c = toMerged(info);
        if (c && c.project === project && wanted.has(c.revision)) out.set(c.revision, c);
      }
    }
    return out;
  }

  async accountId(name: string, signal?: AbortSignal): Promise<number | undefined> {
    return (await this.client.account(name, signal))?._account_id;
  }

  async groupMembers(group: string, signal?: AbortSignal): Promise<Set<number>> {
    const ids = new Set<number>();
    for (const a of await this.client.groupMembers(group, signal)) if (a._account_id !== undefined) ids.add(a._account_id);
    return ids;
  }
}

function namesOf(a: AccountInfo): string[] {
  return [a.username, a.email].filter((x): x is string => typeof x === 'string' && x !== '');
}

function ref(a: AccountInfo | undefined): AccountRef | undefined {
  const display = accountName(a);
  if (!a || display === undefined) return undefined;
  return { ...(a._account_id !== undefined ? { id: a._account_id } : {}), names: namesOf(a), display };
}

/** A MERGED ChangeInfo as a MergedChange; undefined for anything else. */
function toMerged(i: ChangeInfo): MergedChange | undefined {
  const revision = i.current_revision;
  const rev = revision ? i.revisions?.[revision] : undefined;
  const owner = ref(i.owner);
  if (i.status !== 'MERGED' || !revision || !rev || !owner) return undefined;
  const votes: MergedChange['votes'] = [];
  for (const [label, info] of Object.entries(i.labels ?? {})) {
    for (const a of info.all ?? []) {
      const by = ref(a);
      if (by && a.value !== undefined && a.value !== 0 && a.post_submit !== true) votes.push({ label, value: a.value, by, ...(a.date ? { date: a.date } : {}) });
    }
  }
  const uploader = ref(rev.uploader);
  const submitter = ref(i.submitter);
  // Everyone who put a patch set of it up, and whoever the merged commit names as its author or committer.
  const uploaders = Object.values(i.revisions ?? {}).flatMap((r) => [ref(r.uploader), ref(r.real_uploader)].filter((x): x is AccountRef => x !== undefined));
  const authorEmails = [rev.commit?.author?.email, rev.commit?.committer?.email].filter((x): x is string => typeof x === 'string' && x !== '');
  return {
    number: i._number,
    ...(i.change_id ? { changeId: i.change_id } : {}),
    project: i.project,
    branch: i.branch.replace(/^refs\/heads\//, ''),
    ...(i.subject !== undefined ? { subject: i.subject } : {}),
    patchset: rev._number,
    revision,
    owner,
    ...(uploader ? { uploader } : {}),
    uploaders,
    authorEmails,
    ...(submitter ? { submitter } : {}),
    ...(i.submitted ? { submitted: i.submitted } : {}),
    votes,
  };
}
