#!/usr/bin/env node
// Load generator for bench/ws_rooms.py: many stock Yjs clients in ONE Node process, driven
// through stdin/stdout JSON lines. Two protocols:
//   y-websocket  Y.Doc + y-websocket's WebsocketProvider over `ws` (crdt-sync, the y-websocket
//                reference server, pycrdt-websocket): the room is the last URL path segment
//   hocuspocus   Y.Doc + @hocuspocus/provider v3's HocuspocusProvider, each on its own
//                HocuspocusProviderWebsocket (so one socket per client, like the y-websocket
//                clients): the document name prefixes every message
//
//   node bench/ws/load.mjs            (the packages come from tests/interop/node_modules,
//                                      or from $CRDT_BENCH_NODE_MODULES_DIR/node_modules;
//                                      hocuspocus clients need @hocuspocus/provider there too,
//                                      e.g. bench/peers)
//
// Every command is one JSON object with an `id`; each is answered by exactly one line
// {"id": <same>, "ok": true, ...} or {"id": <same>, "ok": false, "error": "..."}. stdout carries
// only those lines; diagnostics go to stderr. Times are wall-clock milliseconds with sub-ms
// resolution (performance.timeOrigin + performance.now()), comparable across the processes of
// one host. The packages are loaded at the first `connect` (one Yjs instance per process: a
// process serves one modules directory).
//
// Commands
//   connect  {url, clients: [{key, room, token?, client_id?, light?}], concurrency, timeout_ms,
//            awareness, deflate, protocol?, modules_dir?}: protocol "y-websocket" (default) or
//            "hocuspocus"; `url` is the provider's server URL (y-websocket: the room is appended
//            as a path segment, the token as ?token= when there is one; hocuspocus: used as is,
//            the token goes in its Auth message). Light clients are protocol-level (see
//            LightClient), the others stock providers. Opens the clients, at most `concurrency`
//            handshakes in flight; answers once each has synced or timed out, starting none after
//            `deadline_ms`: {connected, failed, not_started, handshake_ms: [...], deflate:
//            n clients whose socket negotiated permessage-deflate, started_at, finished_at}. A
//            handshake runs from creating the socket to the provider's first `sync`/`synced`.
//            awareness false: no awareness state (stock clients have one); deflate false: no
//            permessage-deflate offer (`ws` and browsers offer it). `modules_dir` overrides
//            $CRDT_BENCH_NODE_MODULES_DIR (only before the packages are loaded).
//   edit     {start_at, warmup_ms, duration_ms, rate_hz, root}: from wall time `start_at`, every
//            client inserts one character (its own, U+4E00 + key) at a random index of the Y.Text
//            `root`, `rate_hz` times a second, with a random phase, until
//            start_at + warmup_ms + duration_ms. Incoming updates are recorded as (receiver key,
//            origin client id, clock, receive time) from then until `collect`. Answers when the
//            sending ends: {sends: [{key, client_id, count, next_clock, times: [clock, t, …]}]}.
//   wait_converged {expected: {client_id: next_clock}, timeout_ms, root}: waits until every
//            local client holds every expected clock; {converged, waited_ms, docs: [{key, length,
//            digest}] of the stock clients, counts: {char code: n} of the first one}.
//   collect  {}: {receives: [receiver key, client id, clock, t, …]} and stops recording.
//   status   {}: {clients, connected, synced, errors: {kind: n}, rss_bytes}
//   exit     {}: destroys every provider (closing its socket) and exits 0.

import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import process from 'node:process'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
let modulesDir =
  process.env.CRDT_BENCH_NODE_MODULES_DIR ?? path.resolve(here, '..', '..', 'tests', 'interop')
// Loaded at the first `connect`. CommonJS builds throughout, so the providers and this script
// share one Yjs instance.
let Y, WebSocket, PlainWebSocket, encoding, decoding
let requireFrom = null
const providers = {}

function loadModules (dir) {
  if (requireFrom !== null) {
    if (dir !== undefined && dir !== null && path.resolve(dir) !== path.resolve(modulesDir)) {
      throw new Error(`packages already loaded from ${modulesDir}: one modules_dir per process`)
    }
    return
  }
  if (dir !== undefined && dir !== null) modulesDir = dir
  const require = createRequire(path.join(path.resolve(modulesDir), 'package.json'))
  Y = require('yjs')
  WebSocket = require('ws')
  encoding = require('lib0/encoding')
  decoding = require('lib0/decoding')
  // `ws` offers permessage-deflate by default, as browsers do; `deflate: false` stops offering it.
  PlainWebSocket = class extends WebSocket {
    constructor (address, protocols) {
      super(address, protocols, { perMessageDeflate: false })
    }
  }
  requireFrom = require
}

function provider (pkg) {
  if (!(pkg in providers)) providers[pkg] = requireFrom(pkg)
  return providers[pkg]
}

const negotiatedDeflate = (ws) => Boolean(ws && ws.extensions && ws.extensions.includes('permessage-deflate'))

process.setMaxListeners(0) // every provider adds an 'exit' listener in Node

const now = () => performance.timeOrigin + performance.now()
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const errorText = (err) => (err instanceof Error ? err.message : String(err))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const errors = new Map()
const countError = (kind) => errors.set(kind, (errors.get(kind) ?? 0) + 1)

// ---------------------------------------------------------------------------------------------
// Clients

const clients = []
let recording = false
let receives = []
const PROTOCOLS = ['y-websocket', 'hocuspocus']

// Resolves with the ms from `open()` to the client's first sync, or null after `timeoutMs`.
const handshake = (client, timeoutMs, open) =>
  new Promise((resolve) => {
    const started = now()
    const timer = setTimeout(() => {
      client.onSynced = null
      countError('handshake timeout')
      resolve(null)
    }, timeoutMs)
    client.onSynced = () => {
      clearTimeout(timer)
      client.onSynced = null
      resolve(now() - started)
    }
    open()
  })

// A stock client: a Y.Doc and a stock provider. What its provider integrates is recorded.
class StockClient {
  constructor (spec) {
    this.key = spec.key
    this.full = true
    this.doc = new Y.Doc()
    if (spec.client_id !== undefined && spec.client_id !== null) this.doc.clientID = spec.client_id
    this.syncedOnce = false
    this.onSynced = null
  }

  // after the subclass made this.provider (the transaction origin of what it receives)
  recordReceives () {
    const provider = this.provider
    const key = this.key
    this.doc.on('afterTransaction', (tr) => {
      if (!recording || tr.origin !== provider) return
      const t = now()
      tr.afterState.forEach((after, client) => {
        for (let clock = tr.beforeState.get(client) ?? 0; clock < after; clock++) {
          receives.push(key, client, clock, t)
        }
      })
    })
  }

  markSynced () {
    if (this.syncedOnce) return
    this.syncedOnce = true
    if (this.onSynced) this.onSynced()
  }

  stateOf (client) {
    return Y.getState(this.doc.store, client)
  }

  connect (timeoutMs) {
    return handshake(this, timeoutMs, () => this.open())
  }
}

// y-websocket's WebsocketProvider: the room is the last path segment, the token ?token=.
class YWebsocketClient extends StockClient {
  constructor (spec, url, awareness, deflate) {
    super(spec)
    const { WebsocketProvider } = provider('y-websocket')
    this.provider = new WebsocketProvider(url, spec.room, this.doc, {
      connect: false,
      params: spec.token ? { token: spec.token } : {},
      WebSocketPolyfill: deflate ? WebSocket : PlainWebSocket,
      disableBc: true,
      maxBackoffTime: 2500
    })
    if (!awareness) this.provider.awareness.setLocalState(null)
    this.provider.on('sync', (synced) => {
      if (synced) this.markSynced()
    })
    this.provider.on('connection-error', (event) => {
      countError(`error: ${event && event.message ? event.message : 'connection error'}`)
    })
    this.provider.on('connection-close', (event) => {
      // null when this process closed the socket itself (exit)
      if (event != null) countError(`closed ${event.code ?? '?'} ${event.reason ?? ''}`.trim())
    })
    this.recordReceives()
  }

  open () {
    this.provider.connect()
  }

  isConnected () {
    return this.provider.wsconnected
  }

  isSynced () {
    return this.provider.synced
  }

  deflate () {
    return negotiatedDeflate(this.provider.ws)
  }

  destroy () {
    this.provider.destroy()
  }
}

// @hocuspocus/provider v3: a HocuspocusProvider on a HocuspocusProviderWebsocket of its own (one
// socket per client); it sends its Auth message (the token, "" without one) and sync step 1 on
// open. Reconnect delays capped at 2.5 s like the y-websocket clients' maxBackoffTime.
class HocuspocusClient extends StockClient {
  constructor (spec, url, awareness, deflate) {
    super(spec)
    const { HocuspocusProvider, HocuspocusProviderWebsocket } = provider('@hocuspocus/provider')
    this.socket = new HocuspocusProviderWebsocket({
      url,
      WebSocketPolyfill: deflate ? WebSocket : PlainWebSocket,
      autoConnect: false,
      maxDelay: 2500
    })
    this.provider = new HocuspocusProvider({
      websocketProvider: this.socket,
      name: spec.room,
      document: this.doc,
      token: spec.token ?? null
    })
    if (!awareness) this.provider.awareness.setLocalState(null)
    this.provider.on('synced', () => this.markSynced())
    this.provider.on('authenticationFailed', ({ reason }) => {
      countError(`authentication failed: ${reason}`)
    })
    // not emitted when this process closes the socket itself (destroy removes the listeners)
    this.socket.on('close', ({ event }) => {
      countError(`closed ${event?.code ?? '?'} ${event?.reason ?? ''}`.trim())
    })
    this.provider.attach()
    this.recordReceives()
  }

  open () {
    this.socket.connect().catch((err) => countError(`error: ${errorText(err)}`))
  }

  isConnected () {
    return this.socket.status === 'connected'
  }

  isSynced () {
    return this.provider.synced
  }

  deflate () {
    return negotiatedDeflate(this.socket.webSocket)
  }

  destroy () {
    this.provider.destroy()
    this.socket.destroy()
  }
}

// A protocol-level client: the same messages on the wire as a stock provider of its protocol
// (sync step 1 with its state vector, step 2 answers, its updates; Hocuspocus: each prefixed
// with the document name, after an Auth message with the token, as the provider sends them),
// but it does not integrate what it receives: it only reads which (client, clock) ranges an
// update carries (Y.parseUpdateMeta). Its own Y.Doc holds only its own edits; the echo of its
// own updates (servers that send an update back to its origin) is not a receive. No awareness
// state. Much cheaper per received update, so a small machine can host 50 busy receivers.
class LightClient {
  constructor (spec, url, deflate, protocol) {
    this.key = spec.key
    this.full = false
    this.hocuspocus = protocol === 'hocuspocus'
    this.room = spec.room
    this.token = spec.token ?? ''
    if (this.hocuspocus) {
      this.url = url
    } else {
      const query = spec.token ? `?token=${encodeURIComponent(spec.token)}` : ''
      this.url = `${url}/${encodeURIComponent(spec.room)}${query}`
    }
    this.deflateOffer = deflate
    this.doc = new Y.Doc()
    if (spec.client_id !== undefined && spec.client_id !== null) this.doc.clientID = spec.client_id
    this.have = new Map() // client id -> next clock not received (all below it were)
    this.ahead = new Map() // client id -> Set of clocks received above a gap
    this.ws = null
    this.connected = false
    this.synced = false
    this.syncedOnce = false
    this.onSynced = null
    this.stopped = false
    this.failures = 0
    this.doc.on('update', (update) => {
      if (this.connected) this.ws.send(this.syncMessage(2, update))
    })
  }

  message (write) {
    const encoder = encoding.createEncoder()
    if (this.hocuspocus) encoding.writeVarString(encoder, this.room)
    write(encoder)
    return encoding.toUint8Array(encoder)
  }

  syncMessage (kind, payload) {
    return this.message((encoder) => {
      encoding.writeVarUint(encoder, 0)
      encoding.writeVarUint(encoder, kind)
      encoding.writeVarUint8Array(encoder, payload)
    })
  }

  authMessage () {
    // MessageType.Auth, AuthMessageType.Token, the token
    return this.message((encoder) => {
      encoding.writeVarUint(encoder, 2)
      encoding.writeVarUint(encoder, 0)
      encoding.writeVarString(encoder, this.token)
    })
  }

  stateOf (client) {
    return client === this.doc.clientID ? Y.getState(this.doc.store, client) : (this.have.get(client) ?? 0)
  }

  isConnected () {
    return this.connected
  }

  isSynced () {
    return this.synced
  }

  deflate () {
    return negotiatedDeflate(this.ws)
  }

  open () {
    const ws = new WebSocket(this.url, { perMessageDeflate: this.deflateOffer })
    this.ws = ws
    ws.binaryType = 'nodebuffer'
    ws.on('open', () => {
      this.connected = true
      if (this.hocuspocus) ws.send(this.authMessage())
      ws.send(this.syncMessage(0, Y.encodeStateVector(this.doc)))
    })
    ws.on('message', (data) => this.receive(data))
    ws.on('error', (err) => countError(`error: ${errorText(err)}`))
    ws.on('close', (code, reason) => {
      this.connected = false
      this.synced = false
      if (this.stopped) return
      countError(`closed ${code} ${reason}`.trim())
      if (code >= 4400 && code < 4500) return
      this.failures++
      setTimeout(() => this.open(), Math.min(2 ** this.failures * 100, 2500))
    })
  }

  // Hocuspocus framing: the document name, then the message type; Auth answers are read, and
  // sync status acks, awareness and stateless messages ignored, like the y-websocket ones.
  receive (data) {
    const decoder = decoding.createDecoder(data)
    if (this.hocuspocus) {
      if (decoding.readVarString(decoder) !== this.room) return
      const type = decoding.readVarUint(decoder)
      if (type === 2) {
        const auth = decoding.readVarUint(decoder)
        if (auth === 0) this.ws.send(this.authMessage()) // the server asks for the token again
        if (auth === 1) countError(`permission denied: ${decoding.readVarString(decoder)}`)
        return
      }
      if (type !== 0 && type !== 4) return // 4: SyncReply, a sync message
    } else if (decoding.readVarUint(decoder) !== 0) {
      return // awareness and queries: ignored
    }
    const kind = decoding.readVarUint(decoder)
    const payload = decoding.readVarUint8Array(decoder)
    if (kind === 0) {
      this.ws.send(this.syncMessage(1, Y.encodeStateAsUpdate(this.doc, payload)))
      return
    }
    const { from, to } = Y.parseUpdateMeta(payload)
    const t = now()
    const own = this.doc.clientID
    to.forEach((end, client) => {
      if (client === own) return
      // A server that drops a message to a slow client (and closes it) may deliver later ones
      // first; the resync after the reconnect fills the gap, as a stock client's pending
      // structs would.
      let have = this.have.get(client) ?? 0
      let ahead = this.ahead.get(client)
      for (let clock = Math.max(have, from.get(client) ?? 0); clock < end; clock++) {
        if (clock < have || ahead?.has(clock)) continue
        if (recording) receives.push(this.key, client, clock, t)
        if (clock === have) {
          have++
          while (ahead?.delete(have)) have++
        } else {
          if (ahead === undefined) {
            ahead = new Set()
            this.ahead.set(client, ahead)
          }
          ahead.add(clock)
        }
      }
      this.have.set(client, have)
    })
    if (kind === 1 && !this.synced) {
      this.synced = true
      this.failures = 0
      if (!this.syncedOnce) {
        this.syncedOnce = true
        if (this.onSynced) this.onSynced()
      }
    }
  }

  destroy () {
    this.stopped = true
    if (this.ws) this.ws.close()
  }

  connect (timeoutMs) {
    return handshake(this, timeoutMs, () => this.open())
  }
}

const STOCK = { 'y-websocket': YWebsocketClient, hocuspocus: HocuspocusClient }

async function connect (cmd) {
  loadModules(cmd.modules_dir)
  const protocol = cmd.protocol ?? 'y-websocket'
  if (!PROTOCOLS.includes(protocol)) throw new Error(`unknown protocol ${JSON.stringify(protocol)}`)
  const awareness = cmd.awareness !== false
  const deflate = cmd.deflate !== false
  const specs = cmd.clients
  if (!Array.isArray(specs)) throw new Error('"clients" must be a list')
  const Stock = STOCK[protocol]
  const mine = specs.map((spec) =>
    spec.light
      ? new LightClient(spec, cmd.url, deflate, protocol)
      : new Stock(spec, cmd.url, awareness, deflate)
  )
  clients.push(...mine)
  const handshakes = []
  let failed = 0
  let next = 0
  const startedAt = now()
  const deadline = startedAt + (cmd.deadline_ms ?? 600000)
  const lane = async () => {
    while (next < mine.length && now() < deadline) {
      const client = mine[next++]
      const ms = await client.connect(Math.min(cmd.timeout_ms ?? 60000, deadline - now()))
      if (ms === null) failed++
      else handshakes.push(ms)
    }
  }
  const lanes = Math.max(1, Math.min(cmd.concurrency ?? 50, mine.length))
  await Promise.all(Array.from({ length: lanes }, lane))
  return {
    connected: handshakes.length,
    failed,
    not_started: mine.length - next,
    handshake_ms: handshakes,
    deflate: mine.filter((c) => c.syncedOnce && c.deflate()).length,
    started_at: startedAt,
    finished_at: now()
  }
}

// ---------------------------------------------------------------------------------------------
// Editing

async function edit (cmd) {
  const root = cmd.root ?? 't'
  const period = 1000 / cmd.rate_hz
  const end = cmd.start_at + cmd.warmup_ms + cmd.duration_ms
  receives = []
  recording = true
  const runOne = async (client) => {
    const doc = client.doc
    const text = doc.getText(root)
    const char = String.fromCharCode(0x4e00 + client.key)
    const times = []
    let next = cmd.start_at + Math.random() * period
    for (;;) {
      const wait = next - now()
      if (wait > 0) await sleep(wait)
      const t = now()
      if (t >= end) break
      const clock = Y.getState(doc.store, doc.clientID)
      text.insert(Math.floor(Math.random() * (text.length + 1)), char)
      times.push(clock, t)
      next += period
    }
    return {
      key: client.key,
      client_id: doc.clientID,
      count: times.length / 2,
      next_clock: Y.getState(doc.store, doc.clientID),
      times
    }
  }
  return { sends: await Promise.all(clients.map(runOne)) }
}

const holdsAll = (client, expected) => {
  for (const [id, nextClock] of expected) {
    if (client.stateOf(id) < nextClock) return false
  }
  return true
}

async function waitConverged (cmd) {
  const expected = Object.entries(cmd.expected ?? {}).map(([c, n]) => [Number(c), n])
  const root = cmd.root ?? 't'
  const started = now()
  const deadline = started + (cmd.timeout_ms ?? 10000)
  let converged = clients.every((c) => holdsAll(c, expected))
  while (!converged && now() < deadline) {
    await sleep(20)
    converged = clients.every((c) => holdsAll(c, expected))
  }
  const full = clients.filter((c) => c.full)
  const docs = full.map((c) => {
    const content = c.doc.getText(root).toString()
    return {
      key: c.key,
      length: content.length,
      digest: createHash('sha1').update(content).digest('hex')
    }
  })
  const counts = {}
  if (full.length > 0) {
    for (const ch of full[0].doc.getText(root).toString()) {
      const code = ch.charCodeAt(0)
      counts[code] = (counts[code] ?? 0) + 1
    }
  }
  return { converged, waited_ms: now() - started, docs, counts }
}

function collect () {
  recording = false
  const out = receives
  receives = []
  return { receives: out.map((v, i) => (i % 4 === 3 ? Math.round(v * 1000) / 1000 : v)) }
}

function status () {
  return {
    clients: clients.length,
    connected: clients.filter((c) => c.isConnected()).length,
    synced: clients.filter((c) => c.isSynced()).length,
    errors: Object.fromEntries(errors),
    rss_bytes: process.memoryUsage().rss
  }
}

// ---------------------------------------------------------------------------------------------
// Main loop

let exiting = false
const shutdown = (code) => {
  if (exiting) return
  exiting = true
  for (const client of clients) {
    try {
      client.destroy()
    } catch (err) {
      process.stderr.write(`load.mjs: ${errorText(err)}\n`)
    }
  }
  // let the close frames go out
  setTimeout(() => process.exit(code), 200)
}

const commands = {
  connect,
  edit,
  wait_converged: waitConverged,
  collect,
  status,
  exit () {
    setImmediate(() => shutdown(0))
    return {}
  }
}

const handleLine = async (line) => {
  if (line.trim() === '') return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ id: null, ok: false, error: `invalid JSON: ${errorText(err)}` })
    return
  }
  const id = cmd && typeof cmd === 'object' && 'id' in cmd ? cmd.id : null
  try {
    const handler = Object.hasOwn(commands, cmd.cmd) ? commands[cmd.cmd] : undefined
    if (handler === undefined) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`)
    const result = await handler(cmd)
    emit({ id, ok: true, ...result })
  } catch (err) {
    emit({ id, ok: false, error: errorText(err) })
  }
}

process.on('uncaughtException', (err) => countError(`uncaught: ${errorText(err)}`))
process.on('unhandledRejection', (err) => countError(`unhandled rejection: ${errorText(err)}`))
process.stdout.on('error', () => shutdown(0))
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  handleLine(line)
})
rl.on('close', () => shutdown(0))
emit({ event: 'started', pid: process.pid, node: process.version })
