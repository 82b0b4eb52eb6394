#!/usr/bin/env node
// Hocuspocus v3 (@hocuspocus/server) as a benchmark peer: in memory (no extensions, so no
// persistence), quiet, no onAuthenticate hook (every token is accepted), on loopback.
//
//   node bench/peers/hocuspocus.mjs --port 1234 [--host 127.0.0.1]
//
// Prints one line `listening <port>` on stdout once the socket accepts connections; SIGTERM or
// SIGINT closes the connections and exits 0 (3 when that takes over 5 s). Document names travel
// inside the messages, so any URL path reaches the same server (bench/peers.py connects to
// ws://host:port).

import process from 'node:process'
import { Server } from '@hocuspocus/server'
import { parseArgs, stopOnSignals } from './args.mjs'

const { host, port } = parseArgs(process.argv.slice(2))

const server = new Server({
  address: host,
  port,
  quiet: true,
  stopOnSignals: false // our own handler below, with a deadline
})

await server.listen()
stopOnSignals(() => server.destroy())
process.stdout.write(`listening ${server.address.port}\n`)
