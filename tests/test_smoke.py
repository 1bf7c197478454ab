from conftest import download, listing, upload


def test_login_list_upload_download(tree, start_server, connect):
    tree.user("alice", password="secret")
    srv = start_server(tree.root)
    ftp = connect(srv.port, "alice", "secret")
    upload(ftp, "a.txt", b"hello")
    assert download(ftp, "a.txt") == b"hello"
    assert any(line.endswith(" a.txt") for line in listing(ftp))
