// Shared by the Node peer start scripts: `--port N [--host H]` and a clean stop on signals.

import process from 'node:process'

export function parseArgs (argv) {
  const out = { host: '127.0.0.1', port: 0 }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    const value = argv[i + 1]
    if ((flag === '--port' || flag === '--host') && value !== undefined) {
      if (flag === '--port') {
        out.port = Number.parseInt(value, 10)
        if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) usage(`bad port ${value}`)
      } else {
        out.host = value
      }
      i++
    } else {
      usage(`unknown argument ${flag}`)
    }
  }
  return out
}

function usage (why) {
  process.stderr.write(`${why}\nusage: node ${process.argv[1]} --port N [--host 127.0.0.1]\n`)
  process.exit(2)
}

// Run `stop` (it may return a promise) on the first SIGTERM/SIGINT, then exit 0; exit 3 when
// it has not finished after `graceMs`, and at once (0) on a second signal.
export function stopOnSignals (stop, graceMs = 5000) {
  let stopping = false
  const handler = () => {
    if (stopping) process.exit(0)
    stopping = true
    setTimeout(() => {
      process.stderr.write(`stop: not done after ${graceMs / 1000} s, exiting with 3\n`)
      process.exit(3)
    }, graceMs).unref()
    Promise.resolve()
      .then(stop)
      .catch((err) => process.stderr.write(`stop: ${err instanceof Error ? err.message : err}\n`))
      .finally(() => process.exit(0))
  }
  process.on('SIGTERM', handler)
  process.on('SIGINT', handler)
}
