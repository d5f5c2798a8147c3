import NIOCore

extension QUICConnection {
    /// Ends `inbound` (its next call returns `nil`) without closing the connection,
    /// so a YoMo client can stop taking frames while its last writes go out.
    /// Bytes already received are still delivered first.
    public func stopReading() {
        let waiter = core.recvShared.withLock { s -> CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>? in
            s.finished = true
            guard s.chunks.isEmpty else { return nil }
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: .success(nil))
    }
}
