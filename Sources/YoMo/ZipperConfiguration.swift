internal import Foundation
internal import Yams

/// A zipper's settings, readable from the Go zipper's YAML config:
///
/// ```yaml
/// name: zipper
/// host: 0.0.0.0
/// port: 9000
/// auth:
///   type: token
///   token: Z2FyZmllbGQ=
/// ```
public struct ZipperConfiguration: Hashable, Sendable {
    public var name: String
    public var host: String
    public var port: Int
    public var authentication: ZipperAuthentication?
    /// The spec version clients must announce (exact match).
    public var version: String

    public static let specVersion = "2024-01-03"

    public init(
        name: String = "zipper",
        host: String = "127.0.0.1",
        port: Int = 9000,
        authentication: ZipperAuthentication? = nil,
        version: String = ZipperConfiguration.specVersion
    ) {
        self.name = name
        self.host = host
        self.port = port
        self.authentication = authentication
        self.version = version
    }

    /// Reads a YAML config; missing keys keep their defaults.
    public init(yaml: String) throws(YoMoError) {
        self.init()
        let root: Any?
        do {
            root = try Yams.load(yaml: yaml)
        } catch {
            throw YoMoError(.invalidConfiguration, "zipper config is not valid YAML: \(error)")
        }
        guard let map = root as? [String: Any] else {
            if root == nil { return }
            throw YoMoError(.invalidConfiguration, "zipper config must be a YAML mapping")
        }
        if let name = map["name"] {
            guard let name = name as? String else { throw YoMoError(.invalidConfiguration, "zipper config: name must be a string") }
            self.name = name
        }
        if let host = map["host"] {
            guard let host = host as? String else { throw YoMoError(.invalidConfiguration, "zipper config: host must be a string") }
            self.host = host
        }
        if let port = map["port"] {
            guard let port = port as? Int, (1...65535).contains(port) else {
                throw YoMoError(.invalidConfiguration, "zipper config: port must be a number from 1 to 65535")
            }
            self.port = port
        }
        if let auth = map["auth"] {
            guard let auth = auth as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth must be a mapping with type and token")
            }
            let type = auth["type"] as? String ?? ""
            guard type == "token" else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth type \"\(type)\" is not supported (use token)")
            }
            let token = auth["token"].map { "\($0)" } ?? ""
            guard !token.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: token auth needs a non-empty token")
            }
            authentication = .token(token)
        }
    }

    public init(contentsOfFile path: String) throws(YoMoError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw YoMoError(.invalidConfiguration, "cannot read zipper config \(path): \(error.localizedDescription)")
        }
        try self.init(yaml: text)
    }
}
