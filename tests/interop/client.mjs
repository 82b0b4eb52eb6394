#!/usr/bin/env node
// One scripted, stock Yjs + y-websocket client, driven through stdin/stdout JSON lines.
//
//   node tests/interop/client.mjs --url ws://127.0.0.1:PORT/sync/v1/rooms --room DOC [--token JWT]
//
// stdout carries only JSON lines: events ({"event": ...}) and one reply per command
// ({"id": <same id>, "ok": true|false, ...}). Diagnostics go to stderr. See README.md.

import { Buffer } from 'node:buffer'
import process from 'node:process'
import readline from 'node:readline'
import { parseArgs } from 'node:util'

import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

// ---------------------------------------------------------------------------------------------
// Output

const emit = (obj) => {
  // Writes to a pipe are synchronous in Node on POSIX, so each line is flushed as written.
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const errorText = (err) => (err instanceof Error ? err.message : String(err))

// ---------------------------------------------------------------------------------------------
// Arguments

let args
try {
  args = parseArgs({
    options: {
      url: { type: 'string' },
      room: { type: 'string' },
      token: { type: 'string' },
      'client-id': { type: 'string' },
      'no-connect': { type: 'boolean', default: false },
      'max-backoff-ms': { type: 'string', default: '2500' }
    },
    strict: true
  }).values
  if (!args.url || args.room === undefined) {
    throw new Error('--url and --room are required')
  }
} catch (err) {
  process.stderr.write(`client.mjs: ${errorText(err)}\n`)
  process.stderr.write(
    'usage: node client.mjs --url ws://HOST:PORT/sync/v1/rooms --room DOC [--token JWT]\n' +
      '       [--client-id N] [--no-connect] [--max-backoff-ms MS]\n'
  )
  process.exit(2)
}

// ---------------------------------------------------------------------------------------------
// Document and provider

const doc = new Y.Doc()
if (args['client-id'] !== undefined) {
  doc.clientID = Number.parseInt(args['client-id'], 10)
}

const params = {}
if (args.token !== undefined) {
  params.token = args.token
}

const provider = new WebsocketProvider(args.url, args.room, doc, {
  connect: false,
  params,
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  maxBackoffTime: Number.parseInt(args['max-backoff-ms'], 10)
})

let remoteUpdates = 0
const syncWaiters = new Set() // called on every sync
const contentWaiters = new Set() // called on every doc update
let lastError = null // message of the last connection error, reset on every new socket

doc.on('update', (_update, origin) => {
  if (origin === provider) {
    remoteUpdates++
  }
  for (const waiter of [...contentWaiters]) {
    waiter()
  }
})

provider.on('status', ({ status }) => {
  if (status === 'connecting') {
    lastError = null
  }
  emit({ event: 'status', status })
})

provider.on('sync', (isSynced) => {
  if (isSynced) {
    emit({ event: 'synced' })
    for (const waiter of [...syncWaiters]) {
      waiter()
    }
  }
})

provider.on('connection-error', (event) => {
  const message = event && event.message ? String(event.message) : 'connection error'
  lastError = message
  emit({ event: 'error', message })
})

provider.on('connection-close', (event) => {
  // `event` is null when this client closed the socket itself (disconnect command): only
  // closes that come from the server or the network are reported.
  if (event == null) {
    return
  }
  const httpMatch = lastError ? /Unexpected server response: (\d+)/.exec(lastError) : null
  emit({
    event: 'closed',
    code: typeof event.code === 'number' ? event.code : null,
    reason: event.reason ? String(event.reason) : '',
    http_status: httpMatch ? Number(httpMatch[1]) : null,
    error: lastError,
    // the provider stops reconnecting after a close its shouldReconnect rejects (4400-4499)
    will_reconnect: provider.shouldConnect && provider.shouldReconnect(event, provider)
  })
})

// ---------------------------------------------------------------------------------------------
// Roots and content

const KINDS = new Set(['text', 'map', 'array', 'xml'])
const knownKinds = new Map() // root name -> kind, learned from the commands

const getRoot = (name, kind) => {
  if (typeof name !== 'string') {
    throw new Error('"root" must be a string')
  }
  if (!KINDS.has(kind)) {
    throw new Error(`unknown root kind ${JSON.stringify(kind)} (text, map, array, xml)`)
  }
  let root
  if (kind === 'text') root = doc.getText(name)
  else if (kind === 'map') root = doc.getMap(name)
  else if (kind === 'array') root = doc.getArray(name)
  else root = doc.getXmlFragment(name)
  knownKinds.set(name, kind)
  return root
}

const rootJson = (name, kind) => {
  const root = getRoot(name, kind)
  if (kind === 'text') return root.toString()
  if (kind === 'xml') return root.toString()
  return root.toJSON()
}

const resolveRoots = (roots, names) => {
  if (roots !== undefined && roots !== null) {
    if (typeof roots !== 'object' || Array.isArray(roots)) {
      throw new Error('"roots" must be an object {name: "text"|"map"|"array"|"xml"}')
    }
    return roots
  }
  const out = {}
  for (const name of names ?? knownKinds.keys()) {
    const kind = knownKinds.get(name)
    if (kind === undefined) {
      throw new Error(`kind of root ${JSON.stringify(name)} unknown: pass "roots"`)
    }
    out[name] = kind
  }
  return out
}

const contentOf = (roots) => {
  const out = {}
  for (const [name, kind] of Object.entries(roots)) {
    out[name] = rootJson(name, kind)
  }
  return out
}

const deepEqual = (a, b) => {
  if (a === b) return true
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  if (Array.isArray(a)) {
    return a.length === b.length && a.every((v, i) => deepEqual(v, b[i]))
  }
  const ka = Object.keys(a)
  const kb = Object.keys(b)
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]))
}

// ---------------------------------------------------------------------------------------------
// Waiting

const timeoutOf = (cmd, fallback) => {
  const t = cmd.timeout_ms ?? fallback
  if (typeof t !== 'number' || !(t >= 0)) throw new Error('"timeout_ms" must be a number >= 0')
  return t
}

const waitSynced = (timeoutMs) =>
  new Promise((resolve) => {
    if (provider.synced) {
      resolve(true)
      return
    }
    const done = (value) => {
      clearTimeout(timer)
      syncWaiters.delete(onSync)
      resolve(value)
    }
    const onSync = () => done(true)
    const timer = setTimeout(() => done(false), timeoutMs)
    syncWaiters.add(onSync)
  })

const waitContent = (roots, expected, timeoutMs) =>
  new Promise((resolve) => {
    let last = null
    const check = () => {
      last = contentOf(roots)
      return deepEqual(last, expected)
    }
    if (check()) {
      resolve({ ok: true, content: last })
      return
    }
    const done = (value) => {
      clearTimeout(timer)
      contentWaiters.delete(onUpdate)
      resolve(value)
    }
    const onUpdate = () => {
      if (check()) done({ ok: true, content: last })
    }
    const timer = setTimeout(() => {
      check()
      done({ ok: false, error: 'timeout waiting for content', content: last })
    }, timeoutMs)
    contentWaiters.add(onUpdate)
  })

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Commands

const requireString = (cmd, key) => {
  if (typeof cmd[key] !== 'string') throw new Error(`"${key}" must be a string`)
  return cmd[key]
}

const requireIndex = (cmd, key) => {
  const v = cmd[key]
  if (!Number.isInteger(v) || v < 0) throw new Error(`"${key}" must be an integer >= 0`)
  return v
}

const otherAwarenessStates = () => {
  const states = {}
  for (const [clientId, state] of provider.awareness.getStates()) {
    if (clientId !== doc.clientID) states[String(clientId)] = state
  }
  return states
}

const info = () => ({
  client_id: doc.clientID,
  connected: provider.wsconnected,
  connecting: provider.wsconnecting,
  synced: provider.synced,
  should_connect: provider.shouldConnect
})

const commands = {
  insert (cmd) {
    const text = getRoot(requireString(cmd, 'root'), 'text')
    const index = requireIndex(cmd, 'index')
    if (index > text.length) throw new Error(`index ${index} beyond length ${text.length}`)
    text.insert(index, requireString(cmd, 'text'))
    return { length: text.length }
  },

  delete (cmd) {
    const text = getRoot(requireString(cmd, 'root'), 'text')
    const index = requireIndex(cmd, 'index')
    const length = requireIndex(cmd, 'length')
    if (index + length > text.length) {
      throw new Error(`range ${index}+${length} beyond length ${text.length}`)
    }
    text.delete(index, length)
    return { length: text.length }
  },

  map_set (cmd) {
    const map = getRoot(requireString(cmd, 'root'), 'map')
    if (!('value' in cmd)) throw new Error('"value" is required')
    map.set(requireString(cmd, 'key'), cmd.value)
    return {}
  },

  map_delete (cmd) {
    const map = getRoot(requireString(cmd, 'root'), 'map')
    map.delete(requireString(cmd, 'key'))
    return {}
  },

  array_push (cmd) {
    const array = getRoot(requireString(cmd, 'root'), 'array')
    if (!Array.isArray(cmd.values)) throw new Error('"values" must be an array')
    array.push(cmd.values)
    return { length: array.length }
  },

  xml_paragraph (cmd) {
    const fragment = getRoot(requireString(cmd, 'root'), 'xml')
    const text = requireString(cmd, 'text')
    const paragraph = new Y.XmlElement('paragraph')
    const xmlText = new Y.XmlText()
    doc.transact(() => {
      fragment.push([paragraph])
      paragraph.insert(0, [xmlText])
      xmlText.insert(0, text)
    })
    return { length: fragment.length }
  },

  async type_chars (cmd) {
    const text = getRoot(requireString(cmd, 'root'), 'text')
    const chars = [...requireString(cmd, 'text')]
    const interval = cmd.interval_ms ?? 5
    if (typeof interval !== 'number' || !(interval >= 0)) {
      throw new Error('"interval_ms" must be a number >= 0')
    }
    for (let i = 0; i < chars.length; i++) {
      if (i > 0) await sleep(interval)
      text.insert(text.length, chars[i])
    }
    return { typed: chars.length, length: text.length }
  },

  content (cmd) {
    return { content: contentOf(resolveRoots(cmd.roots)) }
  },

  async wait_content (cmd) {
    const expected = cmd.equals
    if (expected === null || typeof expected !== 'object' || Array.isArray(expected)) {
      throw new Error('"equals" must be an object {root: json}')
    }
    const roots = resolveRoots(cmd.roots, Object.keys(expected))
    return await waitContent(roots, expected, timeoutOf(cmd, 10000))
  },

  disconnect () {
    provider.disconnect()
    return info()
  },

  async connect (cmd) {
    provider.connect()
    const synced = await waitSynced(timeoutOf(cmd, 10000))
    if (!synced) {
      return { ok: false, error: 'timeout waiting for sync', last_error: lastError, ...info() }
    }
    return info()
  },

  async wait_synced (cmd) {
    const synced = await waitSynced(timeoutOf(cmd, 10000))
    return synced ? info() : { ok: false, error: 'timeout waiting for sync', ...info() }
  },

  info () {
    return info()
  },

  state_vector () {
    return { base64: Buffer.from(Y.encodeStateVector(doc)).toString('base64') }
  },

  state_update () {
    return { base64: Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64') }
  },

  apply_update (cmd) {
    Y.applyUpdate(doc, Buffer.from(requireString(cmd, 'base64'), 'base64'), 'local-apply')
    return {}
  },

  awareness_set (cmd) {
    const state = cmd.state
    if (state !== null && (typeof state !== 'object' || Array.isArray(state))) {
      throw new Error('"state" must be an object or null')
    }
    provider.awareness.setLocalState(state)
    return { client_id: doc.clientID }
  },

  awareness_states () {
    return { client_id: doc.clientID, states: otherAwarenessStates() }
  },

  update_count () {
    return { count: remoteUpdates }
  },

  send_raw (cmd) {
    const bytes = Buffer.from(requireString(cmd, 'base64'), 'base64')
    const ws = provider.ws
    if (!ws || ws.readyState !== WebSocket.OPEN) throw new Error('websocket is not open')
    ws.send(bytes)
    return { sent: bytes.length }
  },

  exit () {
    shutdown(0, true)
    return {}
  }
}

// ---------------------------------------------------------------------------------------------
// Main loop

let exiting = false

const shutdown = (code, afterReply = false) => {
  if (exiting) return
  exiting = true
  const finish = () => {
    try {
      provider.awareness.setLocalState(null)
      provider.destroy()
    } catch (err) {
      process.stderr.write(`client.mjs: ${errorText(err)}\n`)
    }
    process.exit(code)
  }
  // Let the reply line be written first.
  if (afterReply) setImmediate(finish)
  else finish()
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
    if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
      throw new Error('a command must be a JSON object')
    }
    const handler = Object.hasOwn(commands, cmd.cmd) ? commands[cmd.cmd] : undefined
    if (handler === undefined) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`)
    let result = handler(cmd)
    // Synchronous commands are answered at once, so their replies keep the command order.
    if (result instanceof Promise) result = await result
    emit({ id, ok: true, ...result })
  } catch (err) {
    emit({ id, ok: false, error: errorText(err) })
  }
}

process.on('uncaughtException', (err) => {
  emit({ event: 'error', message: `uncaught: ${errorText(err)}` })
})
process.on('unhandledRejection', (err) => {
  emit({ event: 'error', message: `unhandled rejection: ${errorText(err)}` })
})
process.stdout.on('error', () => shutdown(0)) // the reader went away
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  handleLine(line)
})
rl.on('close', () => shutdown(0))

emit({ event: 'started', client_id: doc.clientID, url: provider.url.replace(/token=[^&]*/, 'token=***') })
if (!args['no-connect']) {
  provider.connect()
}
