// Node.js 20 lacks Promise.withResolvers (Node.js 22 has it), which js-libp2p's queues use.
Promise.withResolvers ??= function withResolvers () {
  let resolve, reject
  const promise = new Promise((resolve_, reject_) => { resolve = resolve_; reject = reject_ })
  return { promise, resolve, reject }
}
