import { describe, expect, it } from 'vitest';
import { formatBytes, formatDuration, parseBytes, parseDuration } from '#shared/units.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe('parseBytes', () => {
  it.each([
    ['256m', 256 * MiB],
    ['256M', 256 * MiB],
    ['256mb', 256 * MiB],
    ['2GiB', 2 * GiB],
    ['2gib', 2 * GiB],
    ['1.5g', 1.5 * GiB],
    ['64k', 64 * KiB],
    ['1t', 1024 ** 4],
    ['512', 512],
    [' 10 m ', 10 * MiB],
    ['0', 0],
    [1024, 1024],
    [0, 0],
  ] as const)('%j is %d bytes', (input, bytes) => {
    expect(parseBytes(input)).toBe(bytes);
  });

  it('floors a fractional byte count instead of inventing a byte', () => {
    expect(parseBytes('1.5')).toBe(1);
    expect(parseBytes('0.3k')).toBe(Math.floor(0.3 * 1024));
  });

  it.each([
    ['-1'],
    ['12x'],
    [''],
    ['   '],
    ['m'],
    ['gib'],
    ['1..5g'],
    ['1.g'],
    ['.5g'],
    ['1e3'],
    ['0x10'],
    ['1 0m'],
    ['10mm'],
    ['1p'],
    ['Infinity'],
    ['NaN'],
    [-1],
    [1.5],
    [Number.NaN],
    [Number.POSITIVE_INFINITY],
    [2 ** 53],
  ] as const)('%j is not a size', (input) => {
    expect(parseBytes(input)).toBeUndefined();
  });

  it('refuses a value whose byte count is not a safe integer', () => {
    expect(parseBytes('9999999999t')).toBeUndefined();
  });

  it('refuses strings longer than 32 characters, even when they would parse', () => {
    expect(parseBytes(`${'0'.repeat(31)}1`)).toBe(1); // 32 characters: fine
    expect(parseBytes(`${'0'.repeat(32)}1`)).toBeUndefined();
    expect(parseBytes(`1m${' '.repeat(40)}`)).toBeUndefined();
  });

  it('answers a megabyte-long string quickly with undefined', () => {
    const started = performance.now();
    expect(parseBytes('9'.repeat(1_000_000))).toBeUndefined();
    expect(parseBytes(`${'1'.repeat(1_000_000)}x`)).toBeUndefined();
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('parseDuration (milliseconds)', () => {
  it.each([
    ['30s', 30_000],
    ['10m', 600_000],
    ['500ms', 500],
    ['1h', 3_600_000],
    ['1.5s', 1500],
    ['2 H', 7_200_000],
    ['250MS', 250],
    ['45', 45_000], // a bare number is seconds
    ['0', 0],
    [5, 5000],
    [0.25, 250],
    [0, 0],
  ] as const)('%j is %d ms', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
  });

  it.each([
    ['-1s'],
    ['10d'],
    ['1w'],
    ['s'],
    ['ms'],
    [''],
    ['1.s'],
    ['1e3s'],
    ['10 minutes'],
    ['1h30m'],
    [`${'0'.repeat(32)}1s`],
    [-1],
    [Number.NaN],
    [Number.POSITIVE_INFINITY],
  ] as const)('%j is not a duration', (input) => {
    expect(parseDuration(input)).toBeUndefined();
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1, '1 B'],
    [1023, '1023 B'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [64 * MiB, '64 MiB'],
    [256 * MiB, '256 MiB'],
    [GiB, '1 GiB'],
    [1.5 * GiB, '1.5 GiB'],
    [2048 * GiB, '2048 GiB'],
  ])('%d bytes is %s', (bytes, text) => {
    expect(formatBytes(bytes)).toBe(text);
  });

  it('round-trips the sizes policies are written in', () => {
    for (const s of ['64m', '256m', '1g', '2g', '10m']) {
      expect(parseBytes(formatBytes(parseBytes(s)!).replace(' ', ''))).toBe(parseBytes(s));
    }
  });
});

describe('formatBytes is exact', () => {
  it.each([
    [2 ** 30 + 1, '1073741825 B'],
    [1048575, '1048575 B'],
    [1.25 * 2 ** 20, '1.25 MiB'],
    [1536, '1.5 KiB'],
  ])('%d → %s (never rounds a size into its neighbour)', (bytes, text) => {
    expect(formatBytes(bytes)).toBe(text);
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0 ms'],
    [500, '500 ms'],
    [999, '999 ms'],
    [1000, '1 s'],
    [1500, '1.5 s'],
    [30_000, '30 s'],
    [119_000, '119 s'],
    [120_000, '2 min'],
    [90 * 60_000, '90 min'],
    [150_000, '2.5 min'],
  ])('%d ms is %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });
});
