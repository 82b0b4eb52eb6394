#!/usr/bin/env node
// pouchdb-server 4.2.0 in memory, for the peer benchmarks (bench/pouch.py starts it).
//
//   node bench/peers/pouchdb.mjs --port 5984 [--host 127.0.0.1] [--mode full|minimum]
//                                [--log-level warning] [--log-file PATH] [--exit-with-parent]
//
// What it serves is what `pouchdb-server --in-memory` serves: express-pouchdb (its default
// "fullCouchDB" mode, as the CLI uses) over pouchdb-core with the http, replication and
// mapreduce plugins and the memory adapter (memdown: nothing touches the disk). Differences
// from the CLI, all on purpose:
//   - the CouchDB config lives in memory (the CLI writes ./config.json);
//   - the CouchDB log goes to --log-file (default: the null device) at --log-level (default
//     warning): the CLI logs one info line per request to ./log.txt and tails it to stdout,
//     while crdt-sync serve writes no access log;
//   - no CORS middleware (the benchmark clients are not browsers);
//   - --mode minimum serves express-pouchdb's "minimumForPouchDB" parts only (no auth,
//     validation, security or logging layers).
// --in-memory / -m are accepted for the CLI's sake (it is always in memory). Once PouchDB's
// system databases are set up and it listens, it prints exactly one line `listening <port>`
// to stdout (the actual port, useful with --port 0). SIGTERM and SIGINT close the listener and
// exit 0; with --exit-with-parent it also exits when its parent process goes away.

import { createRequire } from 'node:module'
import os from 'node:os'
import process from 'node:process'

const require = createRequire(import.meta.url) // resolves from bench/peers/node_modules

function parseArgs (argv) {
  const opts = {
    host: '127.0.0.1',
    port: 5984,
    mode: 'full',
    logLevel: 'warning',
    logFile: os.devNull,
    exitWithParent: false
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`)
      return argv[++i]
    }
    if (arg === '--port' || arg === '-p') opts.port = Number(value())
    else if (arg === '--host' || arg === '-o') opts.host = value()
    else if (arg === '--mode') opts.mode = value()
    else if (arg === '--log-level') opts.logLevel = value()
    else if (arg === '--log-file') opts.logFile = value()
    else if (arg === '--exit-with-parent') opts.exitWithParent = true
    else if (arg !== '--in-memory' && arg !== '-m') throw new Error(`unknown argument ${arg}`)
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    throw new Error('--port must be an integer 0..65535')
  }
  if (opts.mode !== 'full' && opts.mode !== 'minimum') throw new Error('--mode is full or minimum')
  return opts
}

function main () {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (err) {
    process.stderr.write(`pouchdb.mjs: ${err.message}\n`)
    process.exit(2)
  }

  const express = require('express')
  const expressPouchDB = require('express-pouchdb')
  const PouchDB = require('pouchdb-core')
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-replication'))
    .plugin(require('pouchdb-mapreduce'))
    .plugin(require('pouchdb-adapter-memory'))

  const pouchApp = expressPouchDB({
    mode: opts.mode === 'full' ? 'fullCouchDB' : 'minimumForPouchDB',
    inMemoryConfig: true,
    logPath: opts.logFile
  })
  if (pouchApp.couchConfig) {
    // registered defaults, like the CLI's; `log.level` is read when the logger is created and
    // on change, so a default set now is picked up at once through the change below
    pouchApp.couchConfig.set('log', 'level', opts.logLevel, () => {})
  }
  // pouchdb-auth, -security etc. set up the system databases in "daemons": listen once they run
  const daemons = pouchApp.setPouchDB(PouchDB.defaults({ adapter: 'memory' }))

  const app = express()
  app.use(pouchApp)

  let server = null
  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    if (server === null) process.exit(0)
    server.close(() => process.exit(0))
    server.closeAllConnections?.() // keep-alive sockets would hold close() open
    setTimeout(() => process.exit(0), 2000).unref()
  }
  Promise.resolve(daemons).then(
    () => {
      if (stopping) return
      server = app.listen(opts.port, opts.host, () => {
        process.stdout.write(`listening ${server.address().port}\n`)
      })
      server.on('error', (err) => {
        process.stderr.write(`pouchdb.mjs: ${err.message}\n`)
        process.exit(1)
      })
    },
    (err) => {
      process.stderr.write(`pouchdb.mjs: setting up PouchDB failed: ${err && err.stack}\n`)
      process.exit(1)
    }
  )
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  if (opts.exitWithParent) {
    const parent = process.ppid
    setInterval(() => {
      if (process.ppid !== parent) stop()
    }, 500).unref()
  }
}

main()
