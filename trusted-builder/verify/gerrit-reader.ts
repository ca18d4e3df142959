/**
 * The builder's read-only view of Gerrit (`ReviewReader`), over its REST API with the builder's
 * own account (never the CI's): which merged change each commit is the merged patch set of, with
 * its owner, uploader, submitter and every vote; and the members of a group.
 *
 * `GET /a/changes/?q=project:<p> status:merged (commit:<a> OR commit:<b> …)` with
 * CURRENT_REVISION, DETAILED_LABELS and DETAILED_ACCOUNTS, in batches; `commit:` matches any patch
 * set of a change, so only a change whose *current* (merged) revision is the commit accounts for it.
 */
import { accountName, GerritClient, type AccountInfo, type ChangeInfo } from '../../shared/review/gerrit-rest.js';
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
      const found = await this.client.query(q, ['CURRENT_REVISION', 'DETAILED_LABELS', 'DETAILED_ACCOUNTS'], { limit: 100, max: 1000, ...(signal ? { signal } : {}) });
      for (const info of found) {
        const c = toMerged(info);
        if (c && c.project === project && wanted.has(c.revision)) out.set(c.revision, c);
      }
    }
    return out;
  }

  async groupMembers(group: string, signal?: AbortSignal): Promise<Set<string>> {
    const names = new Set<string>();
    for (const a of await this.client.groupMembers(group, signal)) for (const n of namesOf(a)) names.add(n);
    return names;
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
      if (by && a.value !== undefined && a.value !== 0) votes.push({ label, value: a.value, by, ...(a.date ? { date: a.date } : {}) });
    }
  }
  const uploader = ref(rev.uploader);
  const submitter = ref(i.submitter);
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
    ...(submitter ? { submitter } : {}),
    ...(i.submitted ? { submitted: i.submitted } : {}),
    votes,
  };
}
