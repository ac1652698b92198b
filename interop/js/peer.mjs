// A libp2p peer that is not ours: js-libp2p, with TCP, Noise, Yamux, identify and gossipsub.
// Usage: node peer.mjs <follower multiaddr> <thread id>
// Dials the follower, subscribes to the thread's topic, and prints one JSON line per event:
// {"type": "identify", ...}, {"type": "ready"} once the follower is subscribed too, and
// {"type": "message", "data": <base64>} per message heard. Each base64 line read from stdin
// is published on the topic, answered by {"type": "published"}.
import './node20.mjs'
import { createInterface } from 'node:readline'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { gossipsub } from '@chainsafe/libp2p-gossipsub'
import { multiaddr } from '@multiformats/multiaddr'

const [addr, topic] = process.argv.slice(2)
const say = (event) => console.log(JSON.stringify(event))

const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), pubsub: gossipsub({ emitSelf: false }) }
})
node.addEventListener('peer:identify', (event) => say({
  type: 'identify',
  agent: event.detail.agentVersion,
  protocol: event.detail.protocolVersion,
  protocols: event.detail.protocols
}))
node.services.pubsub.addEventListener('message', (event) => {
  if (event.detail.topic === topic) {
    say({ type: 'message', data: Buffer.from(event.detail.data).toString('base64') })
  }
})
node.services.pubsub.subscribe(topic)
const connection = await node.dial(multiaddr(addr))
const subscribed = () => node.services.pubsub.getSubscribers(topic)
  .some((peer) => peer.equals(connection.remotePeer))
while (!subscribed()) await new Promise((resolve) => setTimeout(resolve, 50))
say({ type: 'ready' })

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === '') continue
  await node.services.pubsub.publish(topic, Buffer.from(line, 'base64'))
  say({ type: 'published' })
}
await node.stop()
