/**
 * Where a benchmark phase's CPU went, machine-wide, from /proc: this process, the processes it
 * waited for (git, mkfs, mount, …), the Docker engine (dockerd, containerd) and everything else
 * (the containers, their shims and runc, the kernel's own threads). Linux only; figures in ms.
 */
import { readFileSync, readdirSync } from 'node:fs';

const TICK_MS = 10; // USER_HZ is 100 on Linux

interface Sample { busy: number; self: number; children: number; engine: number }

function procTimes(pid: number | 'self'): { own: number; children: number } {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // fields after the name: state(0) … utime(11) stime(12) cutime(13) cstime(14)
  return { own: (Number(f[11]) + Number(f[12])) * TICK_MS, children: (Number(f[13]) + Number(f[14])) * TICK_MS };
}

function enginePids(): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const comm = readFileSync(`/proc/${d}/comm`, 'utf8').trim();
      if (comm === 'dockerd' || comm === 'containerd') out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function sample(pids: number[]): Sample {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const busy = (cpu[0]! + cpu[1]! + cpu[2]! + cpu[5]! + cpu[6]! + cpu[7]!) * TICK_MS;
  const me = procTimes('self');
  let engine = 0;
  for (const p of pids) {
    try { engine += procTimes(p).own; } catch { /* gone */ }
  }
  return { busy, self: me.own, children: me.children, engine };
}

export interface CpuSplit { totalMs: number; selfMs: number; childrenMs: number; engineMs: number; otherMs: number }

/** Starts counting; the returned function gives the CPU since, split. */
export function cpuSplit(): () => CpuSplit {
  const pids = enginePids();
  const a = sample(pids);
  return () => {
    const b = sample(pids);
    const total = b.busy - a.busy;
    const self = b.self - a.self;
    const children = b.children - a.children;
    const engine = b.engine - a.engine;
    return { totalMs: total, selfMs: self, childrenMs: children, engineMs: engine, otherMs: total - self - children - engine };
  };
}

/** Adds two splits. */
export function addSplit(a: CpuSplit, b: CpuSplit): CpuSplit {
  return { totalMs: a.totalMs + b.totalMs, selfMs: a.selfMs + b.selfMs, childrenMs: a.childrenMs + b.childrenMs, engineMs: a.engineMs + b.engineMs, otherMs: a.otherMs + b.otherMs };
}
