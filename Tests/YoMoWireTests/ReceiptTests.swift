import NIOCore
import Testing

@testable import YoMoWire

@Suite("Delivery receipts on the wire")
struct ReceiptTests {
    // Short enough that the body's length takes one byte with the field or without.
    let handshake = HandshakeFrame(name: "w", id: "a-0", clientType: .source, observedTags: [0x33], version: "2024-01-03", wantedTarget: "t")

    @Test("a handshake asking for receipts is Go's bytes plus one field (0x0A) that a decoder keying by id skips")
    func handshakeField() throws {
        let plain = Frame.handshake(handshake).encoded()
        var asking = handshake
        asking.wantsReceipts = true
        let bytes = Frame.handshake(asking).encoded()
        // Go's header and body, the body three bytes longer, then 0A 01 01.
        let plainBody = Array(plain.readableBytesView.dropFirst(2))
        #expect(Array(bytes.readableBytesView) == [0xB1, UInt8(plainBody.count + 3)] + plainBody + [0x0A, 0x01, 0x01])
        #expect(try Frame(decoding: bytes) == .handshake(asking))
        #expect(try Frame(decoding: plain) == .handshake(handshake), "Go's handshake asks for none")
        #expect(!handshake.wantsReceipts)
    }

    @Test("a receipt is one 8-byte big-endian offset under sequence id 1")
    func receiptBytes() throws {
        let frame = Frame.receipt(ReceiptFrame(settledThrough: 0x0102_0304_0506_0708))
        let bytes = frame.encoded()
        #expect(Array(bytes.readableBytesView) == [0xBA, 0x0A, 0x01, 0x08, 1, 2, 3, 4, 5, 6, 7, 8])
        #expect(try Frame(decoding: bytes) == frame)
        #expect(frame.type.description == "ReceiptFrame")
    }

    @Test("a handshake that resumes a connection names it (0x0B); the first receipt answers how far that one was routed (0x02)")
    func resumption() throws {
        var resuming = handshake
        resuming.wantsReceipts = true
        resuming.resumes = "a-0"
        resuming.id = "a-1"
        let bytes = Frame.handshake(resuming).encoded()
        #expect(Array(bytes.readableBytesView.suffix(8)) == [0x0A, 0x01, 0x01, 0x0B, 0x03] + Array("a-0".utf8))
        #expect(try Frame(decoding: bytes) == .handshake(resuming))
        let receipt = Frame.receipt(ReceiptFrame(settledThrough: 39, previousRoutedThrough: 0x0102))
        #expect(Array(receipt.encoded().readableBytesView) == [0xBA, 0x14, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 39, 0x02, 0x08, 0, 0, 0, 0, 0, 0, 1, 2])
        #expect(try Frame(decoding: receipt.encoded()) == receipt)
    }

    @Test("a zipper's word that copies may follow is one byte under sequence id 8; a child a decoder does not know is skipped, as one from before skips this")
    func copiesMayFollow() throws {
        let hint = Frame.receipt(ReceiptFrame(settledThrough: 0, copiesMayFollow: true))
        let bytes = hint.encoded()
        #expect(Array(bytes.readableBytesView) == [0xBA, 0x0D, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x01, 0x01])
        #expect(try Frame(decoding: bytes) == hint)
        // Zero is not set, as for the other flags; a plain receipt has none.
        let zero = ByteBuffer(bytes: [0xBA, 0x0D, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 7, 0x08, 0x01, 0x00])
        #expect(try Frame(decoding: zero) == .receipt(ReceiptFrame(settledThrough: 7)))
        guard case .receipt(let plain) = try Frame(decoding: Frame.receipt(ReceiptFrame(settledThrough: 7)).encoded()) else {
            Issue.record("not a receipt")
            return
        }
        #expect(!plain.copiesMayFollow)
        let unknown = ByteBuffer(bytes: [0xBA, 0x0D, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 7, 0x0E, 0x01, 0x01])
        #expect(try Frame(decoding: unknown) == .receipt(ReceiptFrame(settledThrough: 7)))
    }

    @Test("a zipper's answer to a closing function says what it no longer keeps under sequence id 0x0A, an 8-byte offset beside the closing flag")
    func unkeptThrough() throws {
        let answer = Frame.receipt(ReceiptFrame(settledThrough: 0, closing: true, unkeptThrough: 0x0102))
        let bytes = answer.encoded()
        #expect(Array(bytes.readableBytesView) == [0xBA, 0x17, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0x01, 0x01, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 1, 2])
        #expect(try Frame(decoding: bytes) == answer)
        // The first receipt's word that the zipper answers: the field, at zero.
        let first = Frame.receipt(ReceiptFrame(settledThrough: 9, welcomesHandling: true, unkeptThrough: 0))
        guard case .receipt(let decoded) = try Frame(decoding: first.encoded()) else {
            Issue.record("not a receipt")
            return
        }
        #expect(decoded.unkeptThrough == 0 && decoded.welcomesHandling)
        #expect(try Frame(decoding: Frame.receipt(ReceiptFrame(settledThrough: 9)).encoded()) == .receipt(ReceiptFrame(settledThrough: 9)))
        let short = ByteBuffer(bytes: [0xBA, 0x0E, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x0A, 0x02, 1, 2])
        #expect(throws: WireError.self) { try Frame(decoding: short) }
    }

    @Test("a stream function's receipt says the end of what it handled whose answers are settled under sequence id 0x0C, an 8-byte offset")
    func answeredThrough() throws {
        let receipt = Frame.receipt(ReceiptFrame(settledThrough: 0x20, answeredThrough: 0x10))
        let bytes = receipt.encoded()
        #expect(Array(bytes.readableBytesView) == [0xBA, 0x14, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x0C, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x10])
        #expect(try Frame(decoding: bytes) == receipt)
        guard case .receipt(let plain) = try Frame(decoding: Frame.receipt(ReceiptFrame(settledThrough: 7)).encoded()) else {
            Issue.record("not a receipt")
            return
        }
        #expect(plain.answeredThrough == nil, "a function from before says nothing")
        let short = ByteBuffer(bytes: [0xBA, 0x0E, 0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0x0C, 0x02, 1, 2])
        #expect(throws: WireError.self) { try Frame(decoding: short) }
    }

    @Test("a receipt whose offset is not 8 bytes, or missing, is a bad frame")
    func malformedReceipts() throws {
        let short = ByteBuffer(bytes: [0xBA, 0x09, 0x01, 0x07, 1, 2, 3, 4, 5, 6, 7])
        let error = try #require(throws: WireError.self) { try Frame(decoding: short) }
        #expect(error.code == .invalidValue && error.message.contains("not 8"), "\(error)")
        let empty = ByteBuffer(bytes: [0xBA, 0x00])
        #expect(throws: WireError.self) { try Frame(decoding: empty) }
    }

    @Test("a stream of data frames and receipts decodes in order")
    func streamed() throws {
        let frames: [Frame] = [
            .receipt(ReceiptFrame(settledThrough: 40)), .handshakeAck,
            .data(DataFrame(tag: 0x33, payload: ByteBuffer(string: "a"))), .receipt(ReceiptFrame(settledThrough: .max)),
        ]
        var all = ByteBuffer()
        for frame in frames { frame.encode(into: &all) }
        var decoder = FrameDecoder()
        var decoded: [Frame] = []
        while let frame = try decoder.decodeFrame(buffer: &all) { decoded.append(frame) }
        #expect(decoded == frames)
    }
}
