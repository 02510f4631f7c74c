import fs from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import test from 'ava';
import { startConfiguredMirror, tool } from '../helpers/operator.js';
import { projectRoot } from '../helpers/server-process.js';
import { makeTempDir, runOk } from '../helpers/tools.js';

interface Sample { family: string; type: string; name: string; labels: Record<string, string>; value: number }

/** Scrapes /metrics over HTTP and parses it with Prometheus' reference parser (python3-prometheus-client). */
async function scrape(port: number): Promise<Sample[]> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  if (response.status !== 200) throw new Error(`GET /metrics: ${response.status}`);
  const text = await response.text();
  return new Promise((resolve, reject) => {
    const parser = spawn('/usr/bin/python3', ['-I', path.join(projectRoot, 'test', 'python', 'parse_metrics.py')], { cwd: '/' });
    let out = '';
    let err = '';
    parser.stdout.on('data', (chunk: Buffer) => { out += chunk.toString(); });
    parser.stderr.on('data', (chunk: Buffer) => { err += chunk.toString(); });
    parser.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as Sample[]) : reject(new Error(`not Prometheus exposition: ${err}`))));
    parser.stdin.end(text);
  });
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((sample) => sample.name === name && Object.entries(labels).every(([key, wanted]) => sample.labels[key] === wanted))?.value;
}

test('metrics move with a workload, a failed leg and a resync, and parse as Prometheus exposition', async (t) => {
  const dir = makeTempDir('ops-metrics');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = await startConfiguredMirror(dir, ['--metrics', '127.0.0.1:0']);
  try {
    const port = (server.logs.find((entry) => entry.msg === 'listening')?.metrics as { port: number }).port;
    const before = await scrape(port);
    t.is(value(before, 'nbd_mirror_state', { state: 'optimal' }), 1);
    t.is(value(before, 'nbd_mirror_legs', { state: 'in_sync' }), 2);
    t.is(value(before, 'nbd_mirror_requests_total', { op: 'write' }), 0);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 16M', '-c', 'flush', '-c', 'read 0 4M', server.uri()]);
    const written = await scrape(port);
    t.true(value(written, 'nbd_mirror_requests_total', { op: 'write' })! > 0);
    t.is(value(written, 'nbd_mirror_request_bytes_total', { op: 'write' }), 16 * 1024 * 1024);
    t.is(value(written, 'nbd_mirror_leg_written_bytes_total', { slot: '1' }), 16 * 1024 * 1024, 'the flush wrote the cache back to both legs');
    const flushes = value(written, 'nbd_mirror_request_duration_seconds_count', { op: 'flush' })!;
    t.true(flushes >= 1);
    t.is(value(written, 'nbd_mirror_request_duration_seconds_bucket', { op: 'flush', le: '+Inf' }), flushes, 'the +Inf bucket counts every flush');
    t.true(value(written, 'nbd_mirror_dirty_regions')! > 0, 'the written regions\' bits are set');
    t.true(value(written, 'nbd_mirror_log_commits_total')! > 0);
    t.is((await tool(dir, ['fail', '0'])).code, 0);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x43 0 8M', '-c', 'flush', server.uri()]);
    const degraded = await scrape(port);
    t.is(value(degraded, 'nbd_mirror_state', { state: 'degraded' }), 1);
    t.is(value(degraded, 'nbd_mirror_legs', { state: 'faulty' }), 1);
    t.is(value(degraded, 'nbd_mirror_leg_state', { slot: '0', state: 'faulty' }), 1);
    t.is(value(degraded, 'nbd_mirror_leg_failures_total'), 1);
    t.is((await tool(dir, ['re-add', '0', '--wait'])).code, 0);
    const synced = await scrape(port);
    t.is(value(synced, 'nbd_mirror_state', { state: 'optimal' }), 1);
    const done = value(synced, 'nbd_mirror_resync_done_bytes')!;
    t.true(done > 0);
    t.is(done, value(synced, 'nbd_mirror_resync_total_bytes')!, 'resync bytes reached the total');
    t.is(value(synced, 'nbd_mirror_out_of_sync_bytes'), 0);
    t.is((await tool(dir, ['check'])).code, 0);
    t.is(value(await scrape(port), 'nbd_mirror_check_mismatch_regions'), 0);
    t.is((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
  } finally {
    t.is(await server.stop(), 0);
  }
});
