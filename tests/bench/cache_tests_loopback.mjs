// Preloaded (node --import) into the http-cache-tests server, which calls server.listen(port)
// and so binds every interface: a listen() given only a port binds 127.0.0.1 instead.
import net from 'net'

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if ((typeof args[0] === 'number' || typeof args[0] === 'string') && /^\d+$/.test(String(args[0])) &&
      (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1')
  }
  return listen.apply(this, args)
}
