#!/usr/bin/env node
// The y-websocket reference server (@y/websocket-server: its exported setupWSConnection) as a
// benchmark peer: a plain http server whose upgrades go to a `ws` WebSocketServer, every
// connection handed to setupWSConnection. In memory: the package persists to LevelDB only when
// YPERSISTENCE is set and calls a webhook only when CALLBACK_URL is set; both are removed from
// the environment before it loads. No auth (the reference server has none).
//
//   node bench/peers/y-websocket.mjs --port 1234 [--host 127.0.0.1]
//
// The room is the URL path (ws://host:port/<room>; the query string is ignored). Prints one line
// `listening <port>` on stdout once the socket accepts connections; SIGTERM or SIGINT closes
// everything and exits 0 (3 when that takes over 5 s).
//
// `ws` is the version pinned in bench/peers/package.json (the one Hocuspocus and the clients use);
// the package's own bin script would resolve its optional dependency ws@^6 instead.

import http from 'node:http'
import process from 'node:process'
import { WebSocketServer } from 'ws'
import { parseArgs, stopOnSignals } from './args.mjs'

const { host, port } = parseArgs(process.argv.slice(2))

for (const name of ['YPERSISTENCE', 'CALLBACK_URL', 'CALLBACK_OBJECTS']) delete process.env[name]
// after the environment is clean: the module reads it when it loads
const { setupWSConnection, docs } = await import('@y/websocket-server/utils')

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => wss.emit('connection', ws, request))
})

server.listen(port, host, () => {
  stopOnSignals(async () => {
    for (const client of wss.clients) client.terminate()
    wss.close()
    await new Promise((resolve) => server.close(resolve))
    for (const doc of docs.values()) doc.destroy()
  })
  process.stdout.write(`listening ${server.address().port}\n`)
})
