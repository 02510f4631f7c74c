export * from '../../tools/crash-test/server-process.js';
