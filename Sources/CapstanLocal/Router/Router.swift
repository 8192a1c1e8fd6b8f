import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Where the router sends connections: an instance's port on 127.0.0.1 and its weight.
public struct Backend: Sendable, Hashable {
    public var port: Int
    public var weight: Int
    /// The track of the instance (a router serves one track's instances).
    public var track: String

    public init(port: Int, weight: Int = 1, track: String = "stable") {
        self.port = port
        self.weight = weight
        self.track = track
    }
}

/// A TCP listener spreading connections over ready backends only, by weight (smooth weighted
/// round robin, as nginx). A backend that refuses a connection is skipped for that connection,
/// so a client never sees an instance that just went away. Removed backends drain: their open
/// connections go on until they end.
public final class TCPRouter: Sendable {
    struct State {
        var backends: [Backend] = []
        var current: [Int: Int] = [:]  // smooth weighted round robin state per port
        var active: [Int: Int] = [:]   // open connections per backend port
        var closed = false
    }

    private let state = Mutex(State())
    private let channel: Mutex<Channel?> = Mutex(nil)
    public let host: String
    public let port: Int

    /// Binds `host:port`; throws when the port cannot be bound (in use, no permission).
    public init(host: String, port: Int, backends: [Backend] = []) async throws {
        self.host = host
        self.port = port
        state.withLock { $0.backends = backends }
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { [weak self] inbound in
                guard let self else { return inbound.close() }
                self.accept(inbound)
                return inbound.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: host, port: port).get()
        channel.withLock { $0 = server }
    }

    public func setBackends(_ backends: [Backend]) {
        state.withLock { state in
            state.backends = backends.filter { $0.weight > 0 }
            state.current = state.current.filter { entry in backends.contains { $0.port == entry.key } }
        }
    }

    public var backends: [Backend] { state.withLock { $0.backends } }

    /// Open connections to a backend port.
    public func activeConnections(to port: Int) -> Int { state.withLock { $0.active[port] ?? 0 } }

    /// Stops accepting; open connections go on.
    public func close() async {
        let server = channel.withLock { channel -> Channel? in
            defer { channel = nil }
            return channel
        }
        state.withLock { $0.closed = true }
        try? await server?.close()
    }

    /// The next backend by smooth weighted round robin, skipping `tried`.
    private func pick(excluding tried: Set<Int>) -> Int? {
        state.withLock { state in
            let candidates = state.backends.filter { !tried.contains($0.port) }
            guard !candidates.isEmpty else { return nil }
            let total = candidates.reduce(0) { $0 + $1.weight }
            var best: Backend?
            for backend in candidates {
                state.current[backend.port, default: 0] += backend.weight
                if best == nil || state.current[backend.port]! > state.current[best!.port]! { best = backend }
            }
            state.current[best!.port]! -= total
            // Counted from the pick, not the connect: a drain that starts while this connect is
            // in flight waits for it, so the instance is not stopped under a request.
            state.active[best!.port, default: 0] += 1
            return best!.port
        }
    }

    private func accept(_ inbound: Channel) {
        connect(inbound, tried: [])
    }

    private func connect(_ inbound: Channel, tried: Set<Int>) {
        guard let port = pick(excluding: tried) else {
            inbound.close(promise: nil)
            return
        }
        ClientBootstrap(group: inbound.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connectTimeout(.seconds(2))
            .connect(host: "127.0.0.1", port: port)
            .whenComplete { [self] result in
                switch result {
                case .failure:
                    state.withLock { $0.active[port, default: 1] -= 1 }
                    connect(inbound, tried: tried.union([port]))
                case .success(let outbound):
                    outbound.closeFuture.whenComplete { [self] _ in
                        state.withLock { $0.active[port, default: 1] -= 1 }
                    }
                    let (a, b) = GlueHandler.pair()
                    do {
                        try inbound.pipeline.syncOperations.addHandler(a)
                        outbound.pipeline.addHandler(b).whenComplete { added in
                            if case .failure = added {
                                inbound.close(promise: nil)
                                outbound.close(promise: nil)
                                return
                            }
                            inbound.setOption(.autoRead, value: true).whenFailure { _ in outbound.close(promise: nil) }
                        }
                    } catch {
                        inbound.close(promise: nil)
                        outbound.close(promise: nil)
                    }
                }
            }
    }
}

/// Copies bytes between two channels with back-pressure (a side stops reading while its
/// partner cannot write) and half-closure (end of input on one side closes the other's output).
final class GlueHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var inputClosed = false
    private var outputClosed = false

    static func pair() -> (GlueHandler, GlueHandler) {
        let first = GlueHandler()
        let second = GlueHandler()
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    // The partner's channel may be on another event loop: hop before touching it.
    private func onPartner(_ body: @escaping @Sendable (GlueHandler, ChannelHandlerContext) -> Void) {
        guard let partner, let context = partner.context else { return }
        let box = UnsafeTransfer((partner, context))
        if context.eventLoop.inEventLoop {
            body(partner, context)
        } else {
            context.eventLoop.execute { body(box.value.0, box.value.1) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        onPartner { partner, partnerContext in partner.write(partnerContext, buffer) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        onPartner { _, partnerContext in partnerContext.flush() }
    }

    private func write(_ context: ChannelHandlerContext, _ buffer: ByteBuffer) {
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // What this side sent still reaches the other before it is closed.
        onPartner { partner, partnerContext in partner.afterWrites(partnerContext) { $0.close(promise: nil) } }
        context.fireChannelInactive()
    }

    /// Runs `body` once every write queued so far has gone out (an empty write completes in order).
    private func afterWrites(_ context: ChannelHandlerContext, _ body: @escaping @Sendable (ChannelHandlerContext) -> Void) {
        let box = UnsafeTransfer(context)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in body(box.value) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            inputClosed = true
            onPartner { partner, partnerContext in partner.closeOutput(partnerContext) }
            if outputClosed { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func closeOutput(_ context: ChannelHandlerContext) {
        outputClosed = true
        let both = inputClosed
        afterWrites(context) { context in
            if both { context.close(promise: nil) } else { context.close(mode: .output, promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        onPartner { partner, partnerContext in partner.partnerWritabilityChanged(partnerContext, writable) }
        context.fireChannelWritabilityChanged()
    }

    private func partnerWritabilityChanged(_ context: ChannelHandlerContext, _ writable: Bool) {
        if writable, pendingRead {
            pendingRead = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        // Read only while the partner can take what we read.
        if let partner, let partnerContext = partner.context, !partnerContext.channel.isWritable {
            pendingRead = true
        } else {
            context.read()
        }
    }
}

/// Moves a non-Sendable value to another event loop where it is used alone.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
