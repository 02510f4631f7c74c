import cliProgress from 'cli-progress';
import type { AdminProgress } from './admin-server.js';

export interface ProgressDisplay {
  update: (progress: AdminProgress) => void;
  stop: () => void;
}

function formatRate(bytesPerSecond: number): string {
  const MiB = 1024 * 1024;
  return bytesPerSecond >= MiB ? `${(bytesPerSecond / MiB).toFixed(1)} MiB/s` : `${Math.round(bytesPerSecond / 1024)} KiB/s`;
}

/**
 * A bar with percent, rate and ETA on a terminal (stderr), like qemu-img -p;
 * nothing when stderr is not a terminal, so scripts get only the result.
 */
export function progressBar(label: string, unit = 'regions'): ProgressDisplay {
  if (!process.stderr.isTTY) return { update: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar({
    format: `${label} [{bar}] {percentage}% {value}/{total} ${unit} | {rate} | eta {eta_formatted}{kind}`,
    stream: process.stderr, etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
  let started = false;
  const startedMs = Date.now();
  return {
    update: (progress) => {
      const elapsedSeconds = Math.max(0.001, (Date.now() - startedMs) / 1000);
      const payload = { rate: progress.bytes === undefined ? '' : formatRate(progress.bytes / elapsedSeconds),
        kind: progress.kind ? ` (${progress.kind})` : '' };
      if (!started) {
        bar.start(progress.total, progress.done, payload);
        started = true;
      }
      bar.setTotal(progress.total);
      bar.update(progress.done, payload);
    },
    stop: () => { if (started) bar.stop(); },
  };
}
