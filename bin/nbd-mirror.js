#!/usr/bin/env -S node --no-memory-reducer
import '../dist/cli/main.js';
