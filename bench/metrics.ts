import path from 'node:path';
import { startServerProcess } from '../test/helpers/server-process.js';
import { run, writeRandomFile } from '../test/helpers/tools.js';
import { type FioJob, roundOrder, runFio } from './fio.js';
import { RoundResults } from './paired-ratio.js';

const job: FioJob = { name: '4k-randread-qd32', rw: 'randread', blockSize: '4k', iodepth: 32 };

/**
 * The cost of the metrics endpoint: the default configuration (mirror, log,
 * cache) with listen.metrics on and off, on identical files, 4k random reads
 * at QD32 (the request path's per-request work shows most there), rounds
 * interleaved. The endpoint is scraped once a second during the "on" runs,
 * as a Prometheus server would (every 15 s is usual; this is harsher).
 */
export async function benchMetrics(options: { dir: string; sizeBytes: number; seconds: number; rounds: number }): Promise<void> {
  const source = path.join(options.dir, 'metrics-source.img');
  writeRandomFile(source, options.sizeBytes, 11);
  const sides = await Promise.all((['off', 'on'] as const).map(async (name) => {
    const legs = [0, 1].map((slot) => path.join(options.dir, `metrics-${name}-leg${slot}.img`));
    const log = path.join(options.dir, `metrics-${name}.log`);
    const server = await startServerProcess(['--leg', ...legs, '--log', log, '--size', String(options.sizeBytes), '--no-unix', '--no-admin',
      '--cache', ...(name === 'on' ? ['--metrics', '127.0.0.1:0'] : [])]);
    // Filled through the server from one file, so both mirrors hold the same bytes in the same layout.
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, server.uri()], { timeoutMs: 600_000 });
    const metricsPort = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number } | undefined)?.port;
    return { name, server, legs, metricsPort };
  }));
  try {
    const results = new RoundResults<string>();
    for (let round = 0; round < options.rounds; round += 1) {
      for (const side of roundOrder(sides, round)) {
        let scrapes = 0;
        const scraper = side.metricsPort === undefined ? undefined : setInterval(() => {
          void fetch(`http://127.0.0.1:${side.metricsPort}/metrics`).then((response) => response.text()).then(() => { scrapes += 1; }, () => undefined);
        }, 1000);
        const result = await runFio(side.server.uri(), job, options.seconds, options.sizeBytes, side.legs);
        clearInterval(scraper);
        if (side.metricsPort !== undefined && scrapes === 0) throw new Error('the metrics endpoint was never scraped');
        results.add(side.name, result);
      }
    }
    const ratio = results.ratio('on', 'off');
    console.log(`metrics ${job.name.padEnd(18)} on ${Math.round(results.best('on').iops)} IOPS   ` +
      `off ${Math.round(results.best('off').iops)} IOPS   median of ${ratio.rounds} paired rounds ${ratio.median.toFixed(3)}x ` +
      `(${ratio.min.toFixed(2)}-${ratio.max.toFixed(2)}); target: at least 0.97x`);
  } finally {
    await Promise.all(sides.map((side) => side.server.stop()));
  }
}
