import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { projectRoot } from '../helpers/server-process.js';

/** The source folders and, for each, the folders its files import (relative imports only, type imports included). */
function folderGraph(): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  const skip = new Set(['node_modules', 'dist', 'test', 'bench', 'scripts', 'native', 'docs', 'contrib', '.git', 'data']);
  for (const folder of fs.readdirSync(projectRoot, { withFileTypes: true })) {
    if (!folder.isDirectory() || skip.has(folder.name) || folder.name.startsWith('.')) continue;
    const files = fs.readdirSync(path.join(projectRoot, folder.name), { recursive: true, encoding: 'utf8' }).filter((file) => file.endsWith('.ts'));
    if (files.length === 0) continue;
    const imports = new Set<string>();
    for (const file of files) {
      const text = fs.readFileSync(path.join(projectRoot, folder.name, file), 'utf8');
      for (const match of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
        const target = path.relative(projectRoot, path.resolve(path.join(projectRoot, folder.name, path.dirname(file)), match[1]));
        const top = target.split(path.sep)[0];
        if (top !== folder.name && !top.startsWith('..')) imports.add(top);
      }
    }
    graph.set(folder.name, imports);
  }
  return graph;
}

/** Every cycle among folders (as a path), found by depth-first search. */
function cycles(graph: Map<string, Set<string>>): string[][] {
  const found: string[][] = [];
  const visit = (node: string, trail: string[]): void => {
    const at = trail.indexOf(node);
    if (at >= 0) {
      found.push([...trail.slice(at), node]);
      return;
    }
    for (const next of graph.get(node) ?? []) visit(next, [...trail, node]);
  };
  for (const node of graph.keys()) visit(node, []);
  return found;
}

const graph = folderGraph();

test('the layers import one way: no folder cycle', (t) => {
  t.true(graph.size > 8, `folders found: ${[...graph.keys()].join(', ')}`);
  t.deepEqual(cycles(graph).map((cycle) => cycle.join(' -> ')), []);
});

test('the named rules hold: nbd, regionlog and faults never import backends; tools never cli; mirror never pagecache', (t) => {
  const forbidden: Array<[string, string]> = [['nbd', 'backends'], ['regionlog', 'backends'], ['faults', 'backends'], ['tools', 'cli'],
    ['mirror', 'pagecache']];
  for (const [from, to] of forbidden) t.false(graph.get(from)?.has(to) ?? false, `${from}/ imports ${to}/`);
  t.deepEqual([...(graph.get('sys') ?? [])].sort(), ['blockdev'], 'system calls depend on nothing but the error type');
  t.deepEqual([...(graph.get('blockdev') ?? [])], [], 'the block-device interface depends on nothing');
});

test('the check itself sees a cycle and a forbidden import when there is one', (t) => {
  const broken = new Map([['a', new Set(['b'])], ['b', new Set(['c'])], ['c', new Set(['a'])]]);
  t.deepEqual(cycles(broken)[0], ['a', 'b', 'c', 'a']);
  t.true(graph.get('cli')?.has('tools'), 'the graph has edges (cli uses tools)');
});
