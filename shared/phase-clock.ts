/**
 * Where the time of a build or a promotion went: `phase(name)` records the milliseconds since the
 * previous mark (or the start) under `name`; `phases` is what the result reports.
 */
export function phaseClock(now: () => number = () => performance.now()): { phases: Record<string, number>; phase: (name: string) => void } {
  const phases: Record<string, number> = {};
  let mark = now();
  return {
    phases,
    phase: (name) => {
      const t = now();
      phases[name] = Math.round(t - mark);
      mark = t;
    },
  };
}
