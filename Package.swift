// swift-tools-version:6.1
// swift-yomo: an observability-first Swift SDK for YoMo stream functions.
//
// Layering (see docs/architecture.md): C targets (`C*`) are internal and never
// exported as products; no C type appears in a public API.
import PackageDescription

let strictSwift: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

var products: [Product] = []
var targets: [Target] = []

// MARK: YoMoWire — y3 packets, frames, metadata, ids. Pure Swift, no I/O; only NIOCore's ByteBuffer.
products += [.library(name: "YoMoWire", targets: ["YoMoWire"])]
targets += [
    .target(
        name: "YoMoWire",
        dependencies: [.product(name: "NIOCore", package: "swift-nio")],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoWireTests",
        dependencies: ["YoMoWire", .product(name: "NIOCore", package: "swift-nio")],
        exclude: ["Vectors"],
        swiftSettings: strictSwift
    ),
    .executableTarget(
        name: "yomo-wire-bench",
        dependencies: ["YoMoWire", .product(name: "NIOCore", package: "swift-nio")],
        path: "Benchmarks/WireBench",
        swiftSettings: strictSwift
    ),
]

// MARK: YoMoQUIC — QUIC over ngtcp2 + gnutls (owned by the QUIC work; edit only this section)

// MARK: YoMoTracing — tracer provider, OTLP/HTTP export (owned by the tracing work; edit only this section)

// MARK: YoMo — StreamFunction, Source, Zipper, the `yomo` CLI and examples

let package = Package(
    name: "swift-yomo",
    platforms: [.macOS(.v15)],
    products: products,
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: targets
)
