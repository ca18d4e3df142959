/**
 * A budget for audit records of refused requests: a flood of bad requests (wrong HMAC, garbage)
 * must not fill the builder's disk with one fsync'ed record each. Up to `perMinute` refusals a
 * minute are recorded one by one; beyond that they are counted, and the next record written says
 * how many were left out (`suppressedBefore`), so the log still accounts for every one.
 */
export class RefusalThrottle {
  private window = -1;
  private used = 0;
  private suppressed = 0;

  constructor(
    private readonly perMinute = 60,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether to write this refusal's record; if so, how many were left out since the last one. */
  take(): { record: true; suppressedBefore: number } | { record: false } {
    const minute = Math.floor(this.now() / 60_000);
    if (minute !== this.window) {
      this.window = minute;
      this.used = 0;
    }
    if (this.used >= this.perMinute) {
      this.suppressed++;
      return { record: false };
    }
    this.used++;
    const suppressedBefore = this.suppressed;
    this.suppressed = 0;
    return { record: true, suppressedBefore };
  }
}
