/** Latency summaries shared by the benchmark programs. */

/** Mean and percentiles of latency samples in nanoseconds. */
export interface LatencySummary {
  iterations: number;
  meanNs: number;
  p50Ns: number;
  p99Ns: number;
}

/** Summarises samples (ns); sorts `samples` in place. */
export function summarise(samples: Float64Array): LatencySummary {
  let sum = 0;
  for (const s of samples) sum += s;
  samples.sort();
  const at = (q: number): number => samples[Math.min(samples.length - 1, Math.floor(samples.length * q))] ?? 0;
  return { iterations: samples.length, meanNs: Math.round((sum / samples.length) * 10) / 10, p50Ns: at(0.5), p99Ns: at(0.99) };
}
