// The live log panel: one job of one build, read from the build's event stream
// (GET /api/builds/:id/events: every event from the build's start, then live ones, then `end`).
// Log text is the job's own output, so attacker-written: it goes into one text node, never parsed;
// terminal escape sequences and other control characters are dropped, and only the newest
// MAX_CHARS are kept on the page (the whole log stays at the job's log URL).

const MAX_CHARS = 1_000_000;
// CSI and OSC escape sequences, then any C0 control except tab and newline (carriage returns are
// line ends to the reader).
const ESCAPES = /\u001b\[[0-9;?]*[ -\/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u001b.?/g;
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f]/g;

/**
 * An API URL on this page's origin: opened as http://user:password@host/, a relative URL would
 * carry the credentials, and Chromium refuses to fetch (or stream from) such a URL.
 */
export const api = (path) => new URL(path, location.origin).href;

export function cleanLogText(text) {
  return text.replace(/\r\n?/g, '\n').replace(ESCAPES, '').replace(CONTROLS, '');
}

export class LogView {
  constructor(root) {
    this.root = root;
    this.title = root.querySelector('#log-title');
    this.state = root.querySelector('#log-state');
    this.pre = root.querySelector('#log-text');
    this.text = document.createTextNode('');
    this.pre.replaceChildren(this.text);
    this.source = undefined;
    this.key = '';
  }

  /** Shows job `job` of build `buildId`, live; does nothing when it is already shown. */
  open(buildId, job) {
    const key = `${buildId}\n${job}`;
    if (key === this.key) return;
    this.close();
    this.key = key;
    this.root.hidden = false;
    this.title.textContent = `Log of job ${job} in build #${buildId}`;
    this.setState('Connecting…');
    this.title.focus();
    let opened = 0;
    let trimmed = false;
    const source = new EventSource(api(`/api/builds/${Number(buildId)}/events`));
    this.source = source;
    source.addEventListener('open', () => {
      // A reconnect replays the build from its start: begin again rather than show it twice.
      if (opened++ > 0) this.text.data = '';
    });
    source.addEventListener('log', (ev) => {
      const e = parse(ev.data);
      if (!e || e.job !== job || typeof e.text !== 'string') return;
      const atEnd = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 8;
      this.text.appendData(cleanLogText(e.text));
      if (this.text.length > MAX_CHARS) {
        this.text.deleteData(0, this.text.length - MAX_CHARS);
        if (!trimmed) this.title.textContent += ' (the oldest output is not shown: open the job log for all of it)';
        trimmed = true;
      }
      if (atEnd) this.pre.scrollTop = this.pre.scrollHeight;
    });
    source.addEventListener('job', (ev) => {
      const e = parse(ev.data);
      if (e && e.job === job) this.setState(`Job ${job}: ${e.state}${e.reason ? ` (${e.reason})` : ''}`);
    });
    source.addEventListener('build', (ev) => {
      const e = parse(ev.data);
      if (!e) return;
      if (e.state === 'finished') this.setState(`Build #${buildId} finished: ${e.result ?? 'done'}${e.reason ? ` (${e.reason})` : ''}`);
      else if (e.state === 'queued') this.setState(`Build #${buildId} is queued; the log starts when it runs.`);
    });
    source.addEventListener('end', () => {
      source.close();
      this.state.textContent += ' · end of the log';
    });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) this.setState('The log stream is not available (is the build known to this CI?)');
    });
  }

  close() {
    this.source?.close();
    this.source = undefined;
    this.key = '';
    this.text.data = '';
    this.root.hidden = true;
  }

  setState(text) {
    this.state.textContent = text;
  }
}

function parse(data) {
  try {
    const v = JSON.parse(data);
    return v && typeof v === 'object' ? v : undefined;
  } catch {
    return undefined;
  }
}
