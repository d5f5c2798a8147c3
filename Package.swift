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

// What keeps the shipped executables' resident memory down (docs/performance.md,
// "Footprint (RSS)"):
// - packed relative relocations (DT_RELR, glibc 2.36+): a static-stdlib binary
//   carries ~100,000; as RELA entries (2.3 MB) all are read at every start and
//   stay resident, packed they take 19 KB;
// - no exported symbols: --static-swift-stdlib passes -export-dynamic, which put
//   17,000 symbols (1.7 MB of tables) in the binary that the loader then reads;
//   nothing looks our symbols up at run time;
// - the code each program runs laid out together (deploy/text-order/<program>.txt,
//   made by scripts/text-order.py): the kernel maps 64 KB around each page
//   fault, so scattered code kept ~9 MB of a 14 MB text resident for ~3 MB run.
//   Only functions in sections of their own move, so scripts/static-build.sh
//   (and deploy/Dockerfile) compile with function sections; lld reads the order.
//   The other clients (demo-source, llm-stream-sfn) take the stream function's:
//   they run the same client runtime.
// Executables only: a library product with unsafe flags could not be used as a
// dependency.
func compactExecutable(order program: String) -> [LinkerSetting] {
    [
        .unsafeFlags([
            "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic",
            "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/deploy/text-order/\(program).txt",
            "-Xlinker", "--no-warn-symbol-ordering",
        ])
    ]
}

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
// Needs apt: libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev; tests also gnutls-bin + pip aioquic.
products += [.library(name: "YoMoQUIC", targets: ["YoMoQUIC"])]
targets += [
    .target(
        name: "CNGTCP2",
        // pkg-config for ngtcp2_crypto_gnutls lists no dependencies: link all three here.
        linkerSettings: [
            .linkedLibrary("ngtcp2_crypto_gnutls"), .linkedLibrary("ngtcp2"), .linkedLibrary("gnutls"),
        ]
    ),
    .target(
        name: "YoMoQUIC",
        dependencies: [
            "CNGTCP2", "YoMoWire",
            .product(name: "NIOCore", package: "swift-nio"),
        ],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoQUICTests",
        dependencies: ["YoMoQUIC", "YoMoWire", .product(name: "NIOCore", package: "swift-nio")],
        exclude: ["Resources"],
        swiftSettings: strictSwift
    ),
    .executableTarget(
        name: "yomo-quic-bench",
        dependencies: ["YoMoQUIC", "YoMoWire", .product(name: "NIOCore", package: "swift-nio")],
        path: "Benchmarks/QUICBench",
        swiftSettings: strictSwift
    ),
]

// MARK: YoMoTracing — tracer provider, OTLP/HTTP export (owned by the tracing work; edit only this section)
products += [.library(name: "YoMoTracing", targets: ["YoMoTracing"])]
targets += [
    // libcurl (HTTP) and zlib (gzip request bodies) with typed shims for their variadic/macro APIs.
    // libcurl is loaded on first use (lazy_curl.c), so it is not linked here; zlib is.
    .target(name: "CCurl", linkerSettings: [.linkedLibrary("z")]),
    // protobuf-c output for our OTLP .proto files (regenerate: scripts/generate-otlp-proto.sh).
    .target(
        name: "COTLPProto",
        exclude: ["proto"],
        sources: ["generated"],
        linkerSettings: [.linkedLibrary("protobuf-c")]
    ),
    .target(
        name: "YoMoTracing",
        dependencies: [
            "CCurl",
            "COTLPProto",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "Instrumentation", package: "swift-distributed-tracing"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoTracingTests",
        dependencies: [
            "YoMoTracing",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ],
        exclude: ["otlp_receiver.py", "http_quirks_server.py"],
        swiftSettings: strictSwift
    ),
    // Counts the process's heap allocations for yomo-tracing-bench by interposing libc's malloc.
    .target(name: "CMallocCounter", path: "Benchmarks/CMallocCounter"),
    // Benchmark, not a test: `swift run -c release yomo-tracing-bench`.
    .executableTarget(
        name: "yomo-tracing-bench",
        dependencies: [
            "YoMoTracing",
            "COTLPProto",
            "CMallocCounter",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Benchmarks/TracingBench",
        swiftSettings: strictSwift,
        // CMallocCounter's malloc must be in the dynamic symbol table to interpose glibc's.
        linkerSettings: [.unsafeFlags(["-Xlinker", "--export-dynamic"], .when(platforms: [.linux]))]
    ),
]

// MARK: YoMoLogging — swift-log handlers, trace correlation, OTLP logs
products += [.library(name: "YoMoLogging", targets: ["YoMoLogging"])]
targets += [
    .target(
        name: "YoMoLogging",
        dependencies: [
            "YoMoTracing",
            "COTLPProto",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Instrumentation", package: "swift-distributed-tracing"),
        ],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoLoggingTests",
        dependencies: [
            "YoMoLogging",
            "YoMoTracing",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ],
        exclude: ["otlp_logs_receiver.py"],
        swiftSettings: strictSwift
    ),
    // Benchmark, not a test: `swift run -c release yomo-logging-bench`.
    .executableTarget(
        name: "yomo-logging-bench",
        dependencies: [
            "YoMoLogging", "YoMoTracing",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ],
        path: "Benchmarks/LoggingBench",
        swiftSettings: strictSwift
    ),
]

// MARK: YoMo — StreamFunction, Source, Zipper, the `yomo` CLI and examples
// MARK: YoMoMetrics — meter provider, instruments with exemplars, Prometheus/OpenMetrics endpoint, swift-metrics backend.
products += [.library(name: "YoMoMetrics", targets: ["YoMoMetrics"])]
products += [.library(name: "YoMoTraceView", targets: ["YoMoTraceView"])]
targets += [
    .target(
        name: "YoMoMetrics",
        dependencies: [
            "YoMoTracing",
            "COTLPProto",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoMetricsTests",
        dependencies: [
            "YoMoMetrics", "YoMoTracing",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ],
        swiftSettings: strictSwift
    ),
]

products += [
    .library(name: "YoMo", targets: ["YoMo"]),
    .library(name: "YoMoZipperYAML", targets: ["YoMoZipperYAML"]),
    .executable(name: "yomo", targets: ["YoMoCLI"]),
    .executable(name: "uppercase-sfn", targets: ["uppercase-sfn"]),
    .executable(name: "llm-stream-sfn", targets: ["llm-stream-sfn"]),
    .executable(name: "demo-source", targets: ["demo-source"]),
]
targets += [
    .executableTarget(
        name: "yomo-fault-bench",
        dependencies: [
            "YoMo",
            "YoMoQUIC",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Benchmarks/FaultBench",
        swiftSettings: strictSwift
    ),
    .target(
        name: "YoMo",
        dependencies: [
            "YoMoWire",
            "YoMoQUIC",
            "CNGTCP2",
            "YoMoTracing",
            "YoMoLogging",
            "YoMoMetrics",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ],
        swiftSettings: strictSwift
    ),
    // ZipperConfiguration from YAML, with its own reader of the YAML configs
    // use: Yams would link full Foundation into `yomo serve` (about 4 MB
    // resident). The tests hold the reader to Yams.
    .target(
        name: "YoMoZipperYAML",
        dependencies: ["YoMo"],
        swiftSettings: strictSwift
    ),
    // The local trace viewer of `yomo trace-view`: an OTLP/HTTP receiver and a
    // terminal waterfall (a library product too: the fuzz package feeds it bodies).
    .target(
        name: "YoMoTraceView",
        dependencies: [
            "COTLPProto",
            "YoMoMetrics",
            "YoMoWire",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ],
        swiftSettings: strictSwift
    ),
    .executableTarget(
        name: "YoMoCLI",
        dependencies: [
            "YoMo",
            "YoMoLogging",
            "YoMoTraceView",
            "YoMoWire",
            "YoMoZipperYAML",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        swiftSettings: strictSwift,
        linkerSettings: compactExecutable(order: "yomo")
    ),
    .executableTarget(
        name: "uppercase-sfn",
        dependencies: [
            "YoMo",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Examples/UppercaseSFN",
        swiftSettings: strictSwift,
        linkerSettings: compactExecutable(order: "uppercase-sfn")
    ),
    .executableTarget(
        name: "llm-stream-sfn",
        dependencies: [
            "YoMo",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Examples/LLMStreamSFN",
        swiftSettings: strictSwift,
        linkerSettings: compactExecutable(order: "uppercase-sfn")
    ),
    .executableTarget(
        name: "demo-source",
        dependencies: [
            "YoMo",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Examples/DemoSource",
        swiftSettings: strictSwift,
        linkerSettings: compactExecutable(order: "uppercase-sfn")
    ),
    .testTarget(
        name: "YoMoTraceViewTests",
        dependencies: [
            "YoMoTraceView", "YoMoTracing",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
        ],
        swiftSettings: strictSwift
    ),
    .testTarget(
        name: "YoMoTests",
        dependencies: [
            "YoMo", "YoMoWire", "YoMoQUIC", "YoMoTracing", "YoMoLogging", "YoMoMetrics", "YoMoTraceView", "YoMoZipperYAML",
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            // The reference the zipper's YAML reader is checked against.
            .product(name: "Yams", package: "Yams"),
        ],
        exclude: ["Resources"],
        swiftSettings: strictSwift
    ),
]

// MARK: DocSamples — every ```swift block of README.md and docs/*.md, compiled
// Generated into Examples/DocSamples/ by scripts/check-doc-samples.py (CI checks the
// files match the docs, then builds this target); never edit them by hand.
targets += [
    .target(
        name: "DocSamples",
        dependencies: [
            "YoMo", "YoMoLogging", "YoMoTracing", "YoMoQUIC", "YoMoWire", "YoMoMetrics", "YoMoZipperYAML",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
        ],
        path: "Examples/DocSamples",
        // What a user's package gets (Swift 6 mode, no upcoming features): a sample is
        // right when it compiles there. Each sample is its own file, so it must import
        // the modules whose types it names.
        swiftSettings: [.swiftLanguageMode(.v6)]
    ),
]

let package = Package(
    name: "swift-yomo",
    platforms: [.macOS(.v15)],
    products: products,
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: targets
)
