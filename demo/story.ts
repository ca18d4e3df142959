/**
 * The demo's narration: acts, checked steps (✔ did what it should, ✘ did not) and plain detail
 * lines, written as they happen, then the whole story again as a summary at the end. Output is
 * line-oriented and the same on a terminal and in a log file; only bold headings depend on a TTY.
 */

export interface StoryStep {
  act: string;
  title: string;
  ok: boolean;
  detail?: string;
}

export class Story {
  readonly steps: StoryStep[] = [];
  private act = '';
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WriteStream = process.stdout) {
    this.tty = out.isTTY === true;
  }

  bold(s: string): string {
    return this.tty ? `\u001b[1m${s}\u001b[0m` : s;
  }

  /** A new act: a heading and a line on what it shows. */
  begin(act: string, what: string): void {
    this.act = act;
    this.line(`\n${this.bold(`▶ ${act}`)}`);
    this.line(`  ${what}`);
  }

  /** A checked step: `ok` says whether it did what it should. Returns `ok`. */
  check(title: string, ok: boolean, detail?: string): boolean {
    this.steps.push({ act: this.act, title, ok, ...(detail ? { detail } : {}) });
    this.line(`  ${ok ? '✔' : '✘'} ${title}${detail ? ` — ${detail}` : ''}`);
    return ok;
  }

  /** An unchecked detail line, indented under the steps. */
  info(text: string): void {
    for (const l of text.replace(/\n$/, '').split('\n')) this.line(`      ${l}`);
  }

  line(text: string): void {
    this.out.write(`${text}\n`);
  }

  get failures(): number {
    return this.steps.filter((s) => !s.ok).length;
  }

  /** Every step again, grouped by act. */
  summary(): string[] {
    const lines: string[] = [];
    let act = '';
    for (const s of this.steps) {
      if (s.act !== act) lines.push(`  ${(act = s.act)}`);
      lines.push(`    ${s.ok ? '✔' : '✘'} ${s.title}`);
    }
    return lines;
  }
}
