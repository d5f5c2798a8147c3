// swift-tools-version:6.1
// libFuzzer targets for the YoMo wire decoders and trace-view's body decoding. Kept out of the main package:
// they only link with `-sanitize=fuzzer`. Run them with scripts/fuzz.sh.
import PackageDescription

let fuzzerSettings: [SwiftSetting] = [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "swift-yomo-fuzz",
    dependencies: [
        .package(name: "swift-yomo", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "FrameFuzzer",
            dependencies: [
                .product(name: "YoMoWire", package: "swift-yomo"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
        // The wire sources again (a symlink to ../Sources/YoMoWire), built in
        // this package so that a fuzzer reaches their package-level API.
        .target(
            name: "YoMoWireInFuzz",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "MetadataViewFuzzer",
            dependencies: ["YoMoWireInFuzz", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: fuzzerSettings
        ),
        // What `yomo trace-view` does with a body anyone may post: decode it
        // (the nesting check, then protobuf-c) and draw its spans.
        .executableTarget(
            name: "TraceViewFuzzer",
            dependencies: [.product(name: "YoMoTraceView", package: "swift-yomo")],
            swiftSettings: fuzzerSettings
        ),
        // What `yomo top` does with whatever a target answers: the page parser
        // and its trimming helpers again (symlinks to ../Sources/YoMoMetrics),
        // so the target builds without the metrics runtime behind them.
        .target(name: "MetricsPageInFuzz", swiftSettings: [.swiftLanguageMode(.v6)]),
        .executableTarget(
            name: "MetricsPageFuzzer",
            dependencies: ["MetricsPageInFuzz"],
            swiftSettings: fuzzerSettings
        ),
        .executableTarget(
            name: "MetadataFuzzer",
            dependencies: [
                .product(name: "YoMoWire", package: "swift-yomo"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
    ]
)
