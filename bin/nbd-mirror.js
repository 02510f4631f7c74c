#!/usr/bin/env -S node --no-memory-reducer --initial-old-space-size=64
import '../dist/cli/main.js';
